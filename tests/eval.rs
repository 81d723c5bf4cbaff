//! The Fréchet distance and class statistics against closed forms.

use ddpm::eval::{
    class_stats, frechet_distance, frechet_distance_of, mean_cov, random_orthogonal,
    symmetric_eigen,
};

fn rotate(q: &[f64], diag: &[f64]) -> Vec<f64> {
    // Q diag Q^T
    let d = diag.len();
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            out[i * d + j] = (0..d).map(|k| q[i * d + k] * diag[k] * q[j * d + k]).sum();
        }
    }
    out
}

#[test]
fn eigen_decomposition_recovers_a_known_spectrum() {
    let d = 12;
    let spectrum: Vec<f64> = (0..d).map(|i| 0.1 + i as f64).collect();
    let a = rotate(&random_orthogonal(d, 1), &spectrum);
    let (mut l, _) = symmetric_eigen(&a, d);
    l.sort_by(f64::total_cmp);
    for (got, want) in l.iter().zip(&spectrum) {
        assert!((got - want).abs() < 1e-9, "{l:?}");
    }
}

#[test]
fn frechet_distance_matches_the_closed_form_for_commuting_covariances() {
    let d = 8;
    let q = random_orthogonal(d, 2);
    let v1: Vec<f64> = (0..d).map(|i| 1.0 + i as f64).collect();
    let v2: Vec<f64> = (0..d).map(|i| 0.5 + 0.3 * i as f64).collect();
    let (s1, s2) = (rotate(&q, &v1), rotate(&q, &v2));
    let mu1 = vec![0.0; d];
    let mu2: Vec<f64> = (0..d).map(|i| i as f64 * 0.1).collect();
    // Same eigenvectors: FD = |mu1 - mu2|^2 + sum (sqrt(v1) - sqrt(v2))^2.
    let want: f64 = mu2.iter().map(|m| m * m).sum::<f64>()
        + v1.iter()
            .zip(&v2)
            .map(|(a, b)| (a.sqrt() - b.sqrt()).powi(2))
            .sum::<f64>();
    let got = frechet_distance(&mu1, &s1, &mu2, &s2).unwrap();
    assert!((got - want).abs() < 1e-8, "{got} vs {want}");
    assert!(frechet_distance(&mu1, &s1, &mu1, &s1).unwrap().abs() < 1e-8);
    // Sizes that disagree are errors, not panics.
    assert!(frechet_distance(&mu1, &s1, &mu2[..3], &s2).is_err());
    assert!(frechet_distance(&[], &[], &[], &[]).is_err());
}

#[test]
fn frechet_distance_of_samples_and_class_stats() {
    let rows: Vec<f64> = (0..400).map(|i| ((i * 37) % 101) as f64 / 10.0).collect();
    assert!(frechet_distance_of(&rows, &rows, 4).unwrap().abs() < 1e-8);
    // A feature dimension of 0, a ragged set, a single row: errors, not panics.
    for (a, d) in [(&rows[..], 0), (&rows[..7], 4), (&rows[..4], 4)] {
        let e = frechet_distance_of(a, &rows, d).unwrap_err();
        assert!(e.to_string().contains("at least 2 rows"), "{e}");
    }
    let shifted: Vec<f64> = rows.iter().map(|v| v + 1.0).collect();
    // A shift by 1 in each of 4 dimensions adds exactly 4.
    assert!((frechet_distance_of(&rows, &shifted, 4).unwrap() - 4.0).abs() < 1e-6);
    let (mu, cov) = mean_cov(&[1.0, 2.0, 3.0, 4.0], 1);
    assert_eq!(mu, vec![2.5]);
    assert!((cov[0] - 5.0 / 3.0).abs() < 1e-12);

    // Two classes, uniform histogram: KL 0; all in one class: KL ln 2.
    let (conf, hist, kl) = class_stats(&[0.9, 0.1, 0.2, 0.8], 2);
    assert!((conf - 0.85).abs() < 1e-12);
    assert_eq!(hist, vec![1, 1]);
    assert!(kl.abs() < 1e-12);
    let (_, _, kl) = class_stats(&[0.9, 0.1, 0.7, 0.3], 2);
    assert!((kl - 2f64.ln()).abs() < 1e-12);
}

/// The classifier's helpers refuse images that are not 28x28 grey (an IDX file of another
/// size was a panic in the network's reshape) and labels outside 0-9.
#[test]
fn the_classifier_refuses_other_image_sizes() {
    let dev = burn::tensor::Device::flex();
    let classifier = ddpm::eval::ClassifierConfig::new().init(&dev);
    let set = |rows: usize, cols: usize, label: u8| ddpm::data::ImageSet {
        pixels: vec![0; 4 * rows * cols].into(),
        labels: vec![label; 4],
        count: 4,
        channels: 1,
        rows,
        cols,
        class_names: Vec::new(),
    };
    let e = ddpm::eval::accuracy(&classifier, &set(14, 14, 1), &dev).unwrap_err();
    assert!(e.to_string().contains("14x14"), "{e}");
    let e = ddpm::eval::accuracy(&classifier, &set(28, 28, 12), &dev).unwrap_err();
    assert!(e.to_string().contains("label 12"), "{e}");
    assert!(ddpm::eval::accuracy(&classifier, &set(28, 28, 3), &dev).is_ok());
    let e =
        ddpm::eval::train_classifier(&set(32, 32, 0), &set(28, 28, 0), 1, 0, &dev, &mut |_, _| {})
            .unwrap_err();
    assert!(e.to_string().contains("32x32"), "{e}");
    let images = burn::tensor::Tensor::<4>::zeros([2, 1, 14, 14], &dev);
    let e = ddpm::eval::features_and_probs(&classifier, images).unwrap_err();
    assert!(e.to_string().contains("[1, 28, 28]"), "{e}");
    let samples = burn::tensor::Tensor::<4>::zeros([3, 1, 28, 28], &dev);
    let e = ddpm::eval::quality(&classifier, samples, &set(28, 28, 0), &set(7, 7, 0), &dev)
        .unwrap_err();
    assert!(e.to_string().contains("7x7"), "{e}");
}

/// Scored as samples, the test images themselves have the test set's confident share (the
/// reference the report prints beside the samples') and a Fréchet distance of about zero;
/// the share equals the count of probability rows reaching 0.9, computed here by hand.
#[test]
fn the_test_sets_own_confident_share_is_the_reference() {
    use burn::tensor::Tensor;
    let dev = burn::tensor::Device::flex();
    dev.seed(3);
    let classifier = ddpm::eval::ClassifierConfig::new().init(&dev);
    let n = 40;
    let mut pixels = vec![0u8; n * 28 * 28];
    let mut s = 7u64;
    for p in pixels.iter_mut() {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *p = (s >> 56) as u8;
    }
    let set = ddpm::data::ImageSet {
        pixels: pixels.into(),
        labels: (0..n).map(|i| (i % 10) as u8).collect(),
        count: n,
        channels: 1,
        rows: 28,
        cols: 28,
        class_names: Vec::new(),
    };
    let all: Vec<usize> = (0..n).collect();
    let samples: Tensor<4> = set.batch(&all, &dev);
    let r = ddpm::eval::quality(&classifier, samples.clone(), &set, &set, &dev).unwrap();
    assert_eq!(r.confident_share, r.test_confident_share);
    assert!(r.fid.abs() < 1e-3, "FID of a set against itself: {}", r.fid);
    // The share by hand: the rows whose largest probability reaches 0.9.
    let (_, probs) = ddpm::eval::features_and_probs(&classifier, samples).unwrap();
    let sure = probs
        .chunks(10)
        .filter(|row| row.iter().cloned().fold(f64::MIN, f64::max) >= 0.9)
        .count();
    assert_eq!(r.test_confident_share, sure as f64 / n as f64);
}
