//! One step's gradients on several devices: the batch split into shards, one replica each,
//! the gradients summed on the main device.

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use ddpm_core::{Condition, Conditioned, DdpmError, NoisePredictor};

use super::grads::GradSum;
use super::{BatchSource, TrainError, Trainer, fetch};

impl<M: Module + NoisePredictor<D>, const D: usize> Trainer<M, D> {
    /// The loss of the batch and its gradient summed on the main device, one shard per device.
    pub(super) fn data_parallel_grads(
        &mut self,
        data: &impl BatchSource<D>,
        indices: &[usize],
        mirror: &[bool],
        t: &[usize],
    ) -> Result<(f64, GradientsParams), TrainError> {
        let n = self.devices.len();
        let batch = indices.len();
        let mut shards = Vec::with_capacity(n);
        let mut start = 0;
        for (k, device) in self.devices.iter().enumerate() {
            let len = batch / n + usize::from(k < batch % n);
            let shard_mirror = mirror.get(start..start + len).unwrap_or(&[]);
            let x0 = fetch(data, &indices[start..start + len], shard_mirror, device)?; // [len, ...]
            shards.push((start, len, x0));
            start += len;
        }
        // The noise of the whole batch in one draw, as on one device, then split.
        let numel: usize = shards[0].2.dims()[1..].iter().product();
        let noise = self.state.rng.normal_vec(batch * numel);
        let labels = match self.draw_condition(data, indices)? {
            Some(Condition::Classes(l)) => Some(l),
            _ => None,
        };
        let models: Vec<M> = std::iter::once(self.model.clone())
            .chain(self.replicas.iter().cloned())
            .collect();
        let diffusion = &self.diffusion;
        let work = |(model, (start, len, x0)): (M, (usize, usize, Tensor<D>))| {
            let device = x0.device();
            let dims = x0.dims();
            let eps = Tensor::<D>::from_data(
                TensorData::new(noise[start * numel..(start + len) * numel].to_vec(), dims),
                &device,
            ); // [len, ...]
            let ts = &t[start..start + len];
            let loss = match &labels {
                None => diffusion.loss_with(&model, x0, ts, eps)?,
                Some(l) => {
                    let shard = Condition::Classes(l[start..start + len].to_vec());
                    diffusion.loss_with(&Conditioned::new(&model, shard), x0, ts, eps)?
                }
            }; // [1]
            let loss = loss.mul_scalar(len as f64 / batch as f64); // this shard's share
            let value = loss.clone().into_scalar::<f32>() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            Ok::<_, DdpmError>((value, grads, model))
        };
        let jobs: Vec<_> = models.into_iter().zip(shards).collect();
        let distinct = (0..n).all(|i| (0..i).all(|j| self.devices[i] != self.devices[j]));
        let results: Vec<Result<_, DdpmError>> = if distinct {
            std::thread::scope(|scope| {
                let handles: Vec<_> = jobs
                    .into_iter()
                    .map(|job| scope.spawn(|| work(job)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a replica's thread panicked"))
                    .collect()
            })
        } else {
            jobs.into_iter().map(work).collect()
        };
        let mut value = 0.0;
        let mut total: Option<GradientsParams> = None;
        for result in results {
            let (v, grads, model) = result?;
            value += v;
            let grads = grads.to_device(&self.device, &model);
            total = Some(match total {
                None => grads,
                Some(mut acc) => {
                    self.model.visit(&mut GradSum {
                        acc: &mut acc,
                        other: grads,
                    });
                    acc
                }
            });
        }
        Ok((value, total.unwrap_or_default()))
    }
}
