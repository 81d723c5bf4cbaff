//! An exponential moving average of model weights, which burn does not provide.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::DdpmError;

/// How the EMA decay ramps up at the start of training.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub enum EmaWarmup {
    /// The configured decay from the first update (the paper's TensorFlow code).
    #[default]
    None,
    /// `min(decay, (1 + n) / (10 + n))` after n updates, as TensorFlow's
    /// `ExponentialMovingAverage(num_updates=n)`: early weights are not over-weighted.
    NumUpdates,
}

/// Settings of an [`Ema`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EmaConfig {
    /// Decay in `[0, 1)`: 0.9999 in the paper.
    pub decay: f64,
    /// Warm-up of the decay.
    pub warmup: EmaWarmup,
}

impl Default for EmaConfig {
    /// The paper's decay, 0.9999, with no warm-up.
    fn default() -> Self {
        Self {
            decay: 0.9999,
            warmup: EmaWarmup::None,
        }
    }
}

impl EmaConfig {
    /// Builds an EMA whose shadow starts as a copy of `model` (detached, without autodiff).
    ///
    /// # Errors
    /// [`DdpmError::InvalidConfig`] when the decay is not in `[0, 1)`.
    pub fn init<M: Module>(&self, model: &M) -> Result<Ema<M>, DdpmError> {
        if !(self.decay >= 0.0 && self.decay < 1.0) {
            return Err(DdpmError::InvalidConfig(format!(
                "EMA decay must lie in [0, 1), got {} (the paper uses 0.9999)",
                self.decay
            )));
        }
        Ok(Ema {
            config: *self,
            shadow: model.valid(),
            num_updates: 0,
        })
    }
}

/// An exponential moving average of a model's float parameters:
/// `shadow <- decay * shadow + (1 - decay) * weights` after each optimizer step.
///
/// The shadow lives without autodiff (`Module::valid`), so it can sample directly. Parameters
/// are matched in module order and checked by shape.
#[derive(Debug, Clone)]
pub struct Ema<M: Module> {
    config: EmaConfig,
    shadow: M,
    num_updates: u64,
}

struct Collect {
    values: Vec<Tensor<1>>,
    shapes: Vec<Vec<usize>>,
}

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val().detach().inner();
        self.shapes.push(t.dims().to_vec());
        let n = t.shape().num_elements();
        self.values.push(t.reshape([n]));
    }
}

struct Blend {
    decay: f64,
    values: std::vec::IntoIter<Tensor<1>>,
    shapes: std::vec::IntoIter<Vec<usize>>,
    error: Option<String>,
}

impl ModuleMapper for Blend {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (Some(value), Some(shape)) = (self.values.next(), self.shapes.next()) else {
            self.error
                .get_or_insert_with(|| "the shadow has more parameters".into());
            return param;
        };
        let decay = self.decay;
        let mut wrong = None;
        let param = param.map(|shadow| {
            let dims = shadow.dims();
            if dims.as_slice() != shape.as_slice() {
                wrong = Some(format!("parameter shape {dims:?} against {shape:?}"));
                return shadow;
            }
            let value: Tensor<D> = value.reshape(dims).to_device(&shadow.device());
            shadow.mul_scalar(decay) + value.mul_scalar(1.0 - decay)
        });
        if let Some(w) = wrong {
            self.error.get_or_insert(w);
        }
        param
    }
}

impl<M: Module> Ema<M> {
    /// The averaged model, ready for sampling.
    pub fn model(&self) -> &M {
        &self.shadow
    }
    /// Consumes the EMA, returning the averaged model.
    pub fn into_model(self) -> M {
        self.shadow
    }
    /// Replaces the shadow (when resuming from a checkpoint) and the update count.
    pub fn restore(&mut self, shadow: M, num_updates: u64) {
        self.shadow = shadow;
        self.num_updates = num_updates;
    }
    /// Updates applied so far.
    pub fn num_updates(&self) -> u64 {
        self.num_updates
    }
    /// The settings.
    pub fn config(&self) -> EmaConfig {
        self.config
    }

    /// The decay the next update will use.
    pub fn current_decay(&self) -> f64 {
        match self.config.warmup {
            EmaWarmup::None => self.config.decay,
            EmaWarmup::NumUpdates => {
                let n = self.num_updates as f64;
                self.config.decay.min((1.0 + n) / (10.0 + n))
            }
        }
    }

    /// Blends the current weights of `model` into the shadow.
    ///
    /// # Errors
    /// [`DdpmError::EmaMismatch`] when `model` does not have the shadow's parameters.
    pub fn update(&mut self, model: &M) -> Result<(), DdpmError> {
        let mut collect = Collect {
            values: Vec::new(),
            shapes: Vec::new(),
        };
        model.visit(&mut collect);
        let count = collect.values.len();
        let mut blend = Blend {
            decay: self.current_decay(),
            values: collect.values.into_iter(),
            shapes: collect.shapes.into_iter(),
            error: None,
        };
        let shadow = self.shadow.clone().map(&mut blend);
        if let Some(e) = blend.error {
            return Err(DdpmError::EmaMismatch(e));
        }
        if blend.values.len() != 0 {
            return Err(DdpmError::EmaMismatch(format!(
                "the model has {count} parameters, the shadow fewer"
            )));
        }
        self.shadow = shadow;
        self.num_updates += 1;
        Ok(())
    }
}
