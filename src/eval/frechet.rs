//! The Fréchet distance of two Gaussians fitted to features, and the class statistics of
//! softmax outputs, in f64 on the host.

use ddpm_core::NoiseRng;

use super::error::EvalError;

/// Mean and covariance (unbiased) of `n` rows of dimension `d` (empty for `d = 0`).
pub fn mean_cov(x: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    if d == 0 {
        return (Vec::new(), Vec::new());
    }
    let n = x.len() / d;
    let mut mu = vec![0.0; d];
    for row in x.chunks(d) {
        for (m, v) in mu.iter_mut().zip(row) {
            *m += v / n as f64;
        }
    }
    let mut cov = vec![0.0; d * d];
    for row in x.chunks(d) {
        for i in 0..d {
            let a = row[i] - mu[i];
            for j in i..d {
                cov[i * d + j] += a * (row[j] - mu[j]);
            }
        }
    }
    let denom = (n.max(2) - 1) as f64;
    for i in 0..d {
        for j in i..d {
            let v = cov[i * d + j] / denom;
            cov[i * d + j] = v;
            cov[j * d + i] = v;
        }
    }
    (mu, cov)
}

/// Eigen-decomposition of a symmetric `d x d` matrix by cyclic Jacobi rotations:
/// `(eigenvalues, eigenvectors as columns, row-major)`.
pub fn symmetric_eigen(a: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * d + j].powi(2))
            .sum();
        let scale: f64 = (0..d)
            .map(|i| a[i * d + i].powi(2))
            .sum::<f64>()
            .max(1e-300);
        if off <= 1e-24 * scale {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let (akp, akq) = (a[k * d + p], a[k * d + q]);
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let (apk, aqk) = (a[p * d + k], a[q * d + k]);
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let (vkp, vkq) = (v[k * d + p], v[k * d + q]);
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

fn matmul(a: &[f64], b: &[f64], d: usize) -> Vec<f64> {
    let mut out = vec![0.0; d * d];
    for i in 0..d {
        for k in 0..d {
            let aik = a[i * d + k];
            if aik != 0.0 {
                for j in 0..d {
                    out[i * d + j] += aik * b[k * d + j];
                }
            }
        }
    }
    out
}

/// Fréchet distance between `N(mu1, s1)` and `N(mu2, s2)`:
/// `|mu1 - mu2|^2 + tr(s1 + s2 - 2 (s1^{1/2} s2 s1^{1/2})^{1/2})`.
///
/// # Errors
/// [`EvalError::Invalid`] for a dimension of 0 or sizes that disagree (`d` means, `d x d`
/// covariances).
pub fn frechet_distance(
    mu1: &[f64],
    s1: &[f64],
    mu2: &[f64],
    s2: &[f64],
) -> Result<f64, EvalError> {
    let d = mu1.len();
    let dd = d.checked_mul(d);
    if d == 0 || mu2.len() != d || dd != Some(s1.len()) || dd != Some(s2.len()) {
        return Err(EvalError::Invalid(format!(
            "a Frechet distance needs two means of one dimension d >= 1 and two d x d \
             covariances, got means of {} and {} and covariances of {} and {} values",
            d,
            mu2.len(),
            s1.len(),
            s2.len()
        )));
    }
    let mean_term: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b).powi(2)).sum();
    let (l, v) = symmetric_eigen(s1, d);
    // s1^{1/2} = V diag(sqrt(l)) V^T
    let mut root = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            root[i * d + j] = (0..d)
                .map(|k| v[i * d + k] * l[k].max(0.0).sqrt() * v[j * d + k])
                .sum();
        }
    }
    let m = matmul(&matmul(&root, s2, d), &root, d);
    let sym: Vec<f64> = (0..d * d)
        .map(|ij| 0.5 * (m[ij] + m[(ij % d) * d + ij / d]))
        .collect();
    let (lm, _) = symmetric_eigen(&sym, d);
    let tr_sqrt: f64 = lm.iter().map(|x| x.max(0.0).sqrt()).sum();
    let tr: f64 = (0..d).map(|i| s1[i * d + i] + s2[i * d + i]).sum();
    Ok(mean_term + tr - 2.0 * tr_sqrt)
}

/// Fréchet distance between two sets of feature rows of dimension `d`.
///
/// # Errors
/// [`EvalError::Invalid`] for `d = 0`, a set whose length is not a multiple of `d`, or fewer
/// than 2 rows in a set (no covariance).
pub fn frechet_distance_of(a: &[f64], b: &[f64], d: usize) -> Result<f64, EvalError> {
    for (name, x) in [("first", a), ("second", b)] {
        if d == 0 || !x.len().is_multiple_of(d) || x.len() / d < 2 {
            return Err(EvalError::Invalid(format!(
                "the {name} feature set has {} values: a Frechet distance needs at least 2 \
                 rows of d >= 1 values each (d = {d})",
                x.len()
            )));
        }
    }
    let (m1, s1) = mean_cov(a, d);
    let (m2, s2) = mean_cov(b, d);
    frechet_distance(&m1, &s1, &m2, &s2)
}

/// Statistics of class probabilities (`n x classes`, row-major): mean max-softmax confidence,
/// the histogram of predicted classes, and its KL divergence from uniform (nats).
pub fn class_stats(probs: &[f64], classes: usize) -> (f64, Vec<usize>, f64) {
    let n = probs.len() / classes;
    let mut hist = vec![0usize; classes];
    let mut conf = 0.0;
    for row in probs.chunks(classes) {
        let (k, p) =
            row.iter().enumerate().fold(
                (0, f64::MIN),
                |acc, (k, &p)| if p > acc.1 { (k, p) } else { acc },
            );
        hist[k] += 1;
        conf += p;
    }
    let kl = hist
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n as f64;
            p * (p * classes as f64).ln()
        })
        .sum();
    (conf / n as f64, hist, kl)
}

/// Seeded random rotation helper for tests: a `d x d` orthogonal matrix from Gram–Schmidt.
pub fn random_orthogonal(d: usize, seed: u64) -> Vec<f64> {
    let mut rng = NoiseRng::new(seed);
    let mut q: Vec<Vec<f64>> = Vec::new();
    while q.len() < d {
        let mut v: Vec<f64> = rng.normal_vec(d).into_iter().map(f64::from).collect();
        for u in &q {
            let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-8 {
            q.push(v.into_iter().map(|a| a / norm).collect());
        }
    }
    q.concat()
}
