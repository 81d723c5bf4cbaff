//! Sample quality without Inception weights, the MNIST way: a small CNN classifier trained
//! with burn, whose penultimate features give a "classifier FID" (Fréchet distance), and whose
//! softmax gives confidence and class-histogram statistics.
//!
//! These numbers are comparable only with numbers computed the same way (same classifier
//! architecture, seed and training, same number of samples): they are not the Inception FID of
//! the literature.
//!
//! | file | job |
//! | --- | --- |
//! | `classifier.rs` | [`Classifier`]: layout, training, accuracy, the cached MNIST one |
//! | `frechet.rs` | [`frechet_distance`] and the class statistics |
//! | `quality.rs` | [`quality`]: the MNIST report of a folder of samples; [`load_pngs`] |
//! | `nll.rs` | [`nll`]: the bound in bits/dim |
//! | `own.rs` | [`evaluate_own_data`]: measures for any labelled data, memorisation |
//! | `error.rs` | [`EvalError`] |

mod classifier;
mod error;
mod frechet;
mod nll;
mod own;
mod quality;

pub use classifier::{
    Classifier, ClassifierConfig, accuracy, cached_classifier, classifier_path, features_and_probs,
    train_classifier,
};
pub use error::EvalError;
pub use frechet::{
    class_stats, frechet_distance, frechet_distance_of, mean_cov, random_orthogonal,
    symmetric_eigen,
};
pub use nll::{NllOptions, NllReport, nll};
pub use own::{
    MemorisationReport, OwnDataOptions, OwnDataReport, evaluate_own_data, memorisation,
    nearest_distances,
};
pub use quality::{
    MAX_SAMPLE_SIDE, QualityReport, load_pngs, load_pngs_as, near_black_share, quality,
    requested_class_share,
};
