//! The README's quick start: any noise predictor plugs into the loss and the samplers.
//!
//! `cargo run --release --example quickstart`

use burn::tensor::{Device, Int, Tensor};
use ddpm::core::{
    DiffusionConfig, GaussianDiffusion, NoisePredictor, NoiseRng, PredictorError, SampleOptions,
    SamplerConfig,
};

struct MyNet; // anything that maps (x_t, t) to a tensor of x_t's shape
impl NoisePredictor<2> for MyNet {
    fn predict(&self, x_t: Tensor<2>, _t: Tensor<1, Int>) -> Result<Tensor<2>, PredictorError> {
        Ok(x_t.mul_scalar(0.5))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::default();
    let diffusion = GaussianDiffusion::new(DiffusionConfig::default())?; // T = 1000, linear betas
    let x0 = Tensor::<2>::ones([16, 2], &device);
    let loss = diffusion.loss(&MyNet, x0, &mut NoiseRng::new(0))?; // Algorithm 1
    // Any sampler by name: "ddpm" (Algorithm 2, all T steps), "ddim:50", "dpm++2m:20", ...
    let sampler: SamplerConfig = "ddim:50".parse()?;
    let out = sampler.sample(&diffusion, &MyNet, [16, 2], &device, SampleOptions::new(42))?;
    println!(
        "loss {:?}, samples {:?}",
        loss.into_scalar::<f32>(),
        out.samples.dims()
    );
    Ok(())
}
