//! A downstream user of ddpm: its own noise predictor on 2-D points, trained with
//! `Trainer::fit` (checkpoints, EMA), resumed, sampled, and checked.

use std::error::Error;

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor};
use ddpm::checkpoint;
use ddpm::core::{
    DiffusionConfig, GaussianDiffusion, NoisePredictor, PredictorError, SampleOptions, SamplerKind,
    sinusoidal_embedding, toy,
};
use ddpm::data::{BatchSource, Points};
use ddpm::models::ModelSpec;
use ddpm::train::{FitOptions, TrainConfig, Trainer};

/// eps_theta for points: an MLP on (x, embedding of t).
#[derive(Module, Debug)]
struct PointNet {
    input: Linear,
    time: Linear,
    output: Linear,
}

impl PointNet {
    fn new(device: &Device) -> Self {
        Self {
            input: LinearConfig::new(2, 64).init(device),
            time: LinearConfig::new(16, 64).init(device),
            output: LinearConfig::new(64, 2).init(device),
        }
    }
}

impl NoisePredictor<2> for PointNet {
    fn predict(&self, x_t: Tensor<2>, t: Tensor<1, Int>) -> Result<Tensor<2>, PredictorError> {
        let h = silu(self.input.forward(x_t) + self.time.forward(sinusoidal_embedding(t, 16)));
        Ok(self.output.forward(h)) // [batch, 2]
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let device = Device::flex();
    let run = std::env::temp_dir().join(format!("ddpm-downstream-{}", std::process::id()));
    let (points, _) = toy::eight_gaussians(512, 2.0, 0.2, 0, &device);
    let data = Points::from_tensor(points);
    let diffusion = GaussianDiffusion::new(DiffusionConfig::default())?;
    let spec = ModelSpec::custom("PointNet", &[64])?;
    let config = TrainConfig {
        steps: 6,
        batch_size: 64,
        checkpoint_every: 3,
        ..TrainConfig::default()
    };
    let ad = device.clone().autodiff();
    let mut trainer = Trainer::new(diffusion.clone(), PointNet::new(&ad), config, data.len())?
        .with_spec(spec.clone());
    let first = trainer.fit(&data, FitOptions::new(&run).with_progress(false))?;
    assert_eq!(first.step, 6);
    let mut resumed = Trainer::resume(&run, diffusion.clone(), PointNet::new(&ad), &spec, Some(8))?;
    assert_eq!(resumed.state().step, 6);
    let second = resumed.fit(&data, FitOptions::new(&run).with_progress(false))?;
    assert_eq!(second.step, 8);

    let ckpt = checkpoint::resolve(&run)?.checkpoint;
    assert_eq!(ckpt.meta.state.step, 8);
    let net = checkpoint::load_weights(&ckpt, PointNet::new(&device), true)?;
    let out = SamplerKind::DpmSolver2M.with_steps(10).sample(
        &diffusion,
        &net,
        [32, 2],
        &device,
        SampleOptions::new(0),
    )?;
    assert_eq!(out.samples.dims(), [32, 2]);
    let values: Vec<f32> = out
        .samples
        .into_data()
        .convert::<f32>()
        .iter::<f32>()
        .collect();
    assert!(values.iter().all(|v| v.is_finite()));
    std::fs::remove_dir_all(&run)?;
    println!(
        "downstream: trained {} steps, resumed to {}, sampled {:?}",
        first.step,
        second.step,
        [32, 2]
    );
    Ok(())
}
