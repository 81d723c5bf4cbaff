//! A noise predictor of your own, trained with checkpoints and EMA, resumed, sampled and
//! evaluated through ddpm's public API: `cargo run --release --example custom_predictor -- 300`
//! (optimizer steps in total; run it again with more steps and it resumes).
use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor};
use ddpm::checkpoint;
use ddpm::core::{DiffusionConfig, GaussianDiffusion, NoisePredictor, PredictorError, SamplerKind};
use ddpm::data::{Dataset, ImageSet, Split};
use ddpm::eval::NllOptions;
use ddpm::models::ModelSpec;
use ddpm::sampling::{SampleJob, sample_to_dir};
use ddpm::train::{FitOptions, TrainConfig, Trainer};

/// Three 3x3 convolutions with the timestep embedding added after the first.
#[derive(Module, Debug)]
struct TinyConvNet {
    time: Linear,
    conv_in: Conv2d,
    conv_mid: Conv2d,
    conv_out: Conv2d,
}

const CH: usize = 32;

impl TinyConvNet {
    fn new(device: &Device) -> Self {
        let conv = |i, o| Conv2dConfig::new([i, o], [3, 3]).with_padding(PaddingConfig2d::Same);
        Self {
            time: LinearConfig::new(CH, CH).init(device),
            conv_in: conv(1, CH).init(device),
            conv_mid: conv(CH, CH).init(device),
            conv_out: conv(CH, 1).init(device),
        }
    }
}

impl NoisePredictor<4> for TinyConvNet {
    fn predict(&self, x_t: Tensor<4>, t: Tensor<1, Int>) -> Result<Tensor<4>, PredictorError> {
        let b = x_t.dims()[0];
        let temb = self.time.forward(ddpm::core::sinusoidal_embedding(t, CH)); // [b, CH]
        let h = silu(self.conv_in.forward(x_t)) + temb.reshape([b, CH, 1, 1]); // [b, CH, 28, 28]
        let h = silu(self.conv_mid.forward(h)); // [b, CH, 28, 28]
        Ok(self.conv_out.forward(h)) // [b, 1, 28, 28]
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps: u64 = std::env::args().nth(1).map_or(Ok(300), |s| s.parse())?;
    let (device, run) = (Device::flex(), Path::new("runs/custom"));
    let data = ImageSet::load(Dataset::Mnist, Split::Train, None)?;
    let diffusion = GaussianDiffusion::new(DiffusionConfig::default())?;
    // What checkpoints record about the model (compared when resuming).
    let spec = ModelSpec::custom("TinyConvNet", &[("ch", CH)])?;
    let template = TinyConvNet::new(&device.clone().autodiff());
    let mut trainer = if checkpoint::list(run).is_empty() {
        let config = TrainConfig {
            steps,
            batch_size: 32,
            lr: 1e-3,
            warmup_steps: 50,
            checkpoint_every: 100,
            ..TrainConfig::default()
        };
        Trainer::new(diffusion.clone(), template, config, data.count)?.with_spec(spec)
    } else {
        Trainer::resume(run, diffusion.clone(), template, &spec, Some(steps))?
    };
    let fit = trainer.fit(&data, FitOptions::new(run))?;
    println!("{fit}");

    // The EMA weights of the newest intact checkpoint, on a plain (inference) device.
    let ckpt = checkpoint::resolve(run)?.checkpoint;
    let net = checkpoint::load_weights(&ckpt, TinyConvNet::new(&device), true)?;
    let job = SampleJob::new(16, SamplerKind::DpmSolver2M.with_steps(20)).with_seed(1);
    let (shape, out) = ([1, 28, 28], run.join("samples"));
    println!(
        "{}",
        sample_to_dir(&diffusion, &net, shape, &device, &job, &out)?
    );

    let test = ImageSet::load(Dataset::Mnist, Split::Test, None)?;
    let options = NllOptions {
        num: 16,
        ..NllOptions::default()
    };
    println!(
        "{}",
        ddpm::eval::nll(&diffusion, &net, &test, options, &device, &mut |_, _| {})?
    );
    Ok(())
}
