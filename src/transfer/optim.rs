//! Optimisers over a flat image vector: L-BFGS (default) and Adam.
//!
//! Hand-written rather than taken from argmin: the objective here returns loss *and* gradient from one graph run
//! (argmin's line searches ask for cost and gradient separately, which would double the evaluations or need a
//! cache keyed by the parameter vector), the history is kept in f32 to halve L-BFGS's memory at large sizes
//! (2·m·n floats), and the schedule needs per-iteration callbacks (early stop, intermediate saves, cancellation).

use anyhow::Result;

pub trait Objective {
    /// Loss at x; writes d loss / d x into grad (same length as x).
    fn evaluate(&mut self, x: &[f32], grad: &mut [f32]) -> Result<f64>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Stop,
}

#[derive(Debug, Clone, Copy)]
pub struct IterInfo {
    pub iteration: usize,
    pub evaluations: usize,
    pub loss: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    MaxIterations,
    MaxEvaluations,
    Callback,
    Converged,
    LineSearchFailed,
}

#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub iterations: usize,
    pub evaluations: usize,
    pub loss: f64,
    pub reason: StopReason,
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    // four accumulators in f64: exact enough and vectorisable
    let mut s = [0.0f64; 4];
    let chunks = a.len() / 4 * 4;
    for i in (0..chunks).step_by(4) {
        s[0] += a[i] as f64 * b[i] as f64;
        s[1] += a[i + 1] as f64 * b[i + 1] as f64;
        s[2] += a[i + 2] as f64 * b[i + 2] as f64;
        s[3] += a[i + 3] as f64 * b[i + 3] as f64;
    }
    let mut t = s[0] + s[1] + s[2] + s[3];
    for i in chunks..a.len() {
        t += a[i] as f64 * b[i] as f64;
    }
    t
}

fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// Box constraints lo ≤ x ≤ hi on every variable (an image's [0, 1]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub lo: f32,
    pub hi: f32,
}

impl Bounds {
    pub const UNIT: Bounds = Bounds { lo: 0.0, hi: 1.0 };

    fn project(&self, x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = v.clamp(self.lo, self.hi);
        }
    }

    /// Variables held at a bound: there, the gradient points out of the box (a descent step would leave it).
    fn pinned(&self, x: f32, g: f32) -> bool {
        (x <= self.lo && g > 0.0) || (x >= self.hi && g < 0.0)
    }
}

#[derive(Debug, Clone)]
pub struct Lbfgs {
    pub history: usize,
    pub max_iterations: usize,
    pub max_evaluations: usize,
    /// Box constraints, kept at every evaluation (projected L-BFGS: variables at a bound whose gradient points
    /// outward are left out of the quasi-Newton direction, and the line search moves along the projected path).
    pub bounds: Option<Bounds>,
}

struct Pair {
    s: Vec<f32>,
    y: Vec<f32>,
    rho: f64,
}

impl Lbfgs {
    /// Minimise from `x`; on return `x` holds the last accepted point, the best one (every accepted step is a
    /// strict decrease; rejected line-search trials never replace it). With bounds, `x` is projected into them
    /// first and every point evaluated lies inside them.
    pub fn minimize(
        &self,
        x: &mut [f32],
        f: &mut dyn Objective,
        on_iter: &mut dyn FnMut(&IterInfo, &[f32]) -> Control,
    ) -> Result<Summary> {
        let n = x.len();
        let m = self.history.max(1);
        let mut g = vec![0.0f32; n];
        let mut evals = 0usize;
        if let Some(b) = &self.bounds {
            b.project(x);
        }
        let mut loss = f.evaluate(x, &mut g)?;
        evals += 1;
        let mut pairs: std::collections::VecDeque<Pair> = std::collections::VecDeque::with_capacity(m);
        let mut spare: Option<Pair> = None;
        let mut d = vec![0.0f32; n];
        let mut x_new = vec![0.0f32; n];
        let mut g_new = vec![0.0f32; n];
        let mut alpha = vec![0.0f64; m];
        let mut fails = 0usize;
        let mut iterations = 0usize;
        let mut reason = StopReason::MaxIterations;
        if !loss.is_finite() {
            anyhow::bail!("the objective is not finite at the starting point ({loss})");
        }
        while iterations < self.max_iterations {
            if evals >= self.max_evaluations {
                reason = StopReason::MaxEvaluations;
                break;
            }
            // two-loop recursion: d = -H g, over the free variables when there are bounds
            self.direction(&pairs, &mut alpha, x, &g, &mut d);
            let mut gd = dot(&g, &d);
            if gd.is_nan() || gd >= 0.0 {
                // not a descent direction: forget the curvature pairs and use steepest descent
                pairs.clear();
                let gmax = g.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let sc = if gmax > 0.0 { (1.0 / 255.0) / gmax } else { 1.0 };
                for ((di, gi), xi) in d.iter_mut().zip(&g).zip(x.iter()) {
                    *di = if self.bounds.is_some_and(|b| b.pinned(*xi, *gi)) { 0.0 } else { -sc * gi };
                }
                gd = dot(&g, &d);
                if gd.is_nan() || gd >= 0.0 {
                    reason = StopReason::Converged; // zero gradient
                    break;
                }
            }
            // backtracking line search (Armijo, c1 = 1e-4) with quadratic / cubic interpolation
            let (accepted, loss_new) =
                self.line_search(f, x, &d, &g, (loss, gd), (&mut x_new, &mut g_new), &mut evals)?;
            if !accepted {
                if evals >= self.max_evaluations {
                    reason = StopReason::MaxEvaluations;
                    break;
                }
                fails += 1;
                pairs.clear();
                if fails >= 2 {
                    reason = StopReason::LineSearchFailed;
                    break;
                }
                continue;
            }
            fails = 0;
            // curvature pair s = x_new - x, y = g_new - g (reuse the oldest buffers when full)
            store_pair(&mut pairs, &mut spare, m, (x, &x_new), (&g, &g_new));
            x.copy_from_slice(&x_new);
            std::mem::swap(&mut g, &mut g_new);
            // Armijo acceptance makes every accepted step a strict decrease: x is always the best point seen.
            loss = loss_new;
            iterations += 1;
            if on_iter(&IterInfo { iteration: iterations, evaluations: evals, loss }, x) == Control::Stop {
                reason = StopReason::Callback;
                break;
            }
        }
        Ok(Summary { iterations, evaluations: evals, loss, reason })
    }
}

impl Lbfgs {
    /// Backtracking line search along `d` from `x` (value and directional derivative `at_zero`), along the projected
    /// path when there are bounds: whether a step was accepted (Armijo, c1 = 1e-4), and its loss; the trial point and
    /// its gradient are left in `trial`.
    #[allow(clippy::too_many_arguments)]
    fn line_search(
        &self,
        f: &mut dyn Objective,
        x: &[f32],
        d: &[f32],
        g: &[f32],
        (loss, gd): (f64, f64),
        (x_new, g_new): (&mut [f32], &mut [f32]),
        evals: &mut usize,
    ) -> Result<(bool, f64)> {
        let c1 = 1e-4;
        let mut t = 1.0f64;
        let mut prev: Option<(f64, f64)> = None; // (t, f) of the previous trial
        let mut loss_new = f64::NAN;
        while *evals < self.max_evaluations {
            for ((xn, xi), di) in x_new.iter_mut().zip(x.iter()).zip(d) {
                *xn = xi + (t as f32) * di;
            }
            // along the projected path; sufficient decrease measured on the step actually taken
            let decrease = match &self.bounds {
                Some(b) => {
                    b.project(x_new);
                    let mut s = 0.0f64;
                    for ((xn, xi), gi) in x_new.iter().zip(x.iter()).zip(g) {
                        s += (*xn as f64 - *xi as f64) * *gi as f64;
                    }
                    s
                }
                None => t * gd,
            };
            loss_new = f.evaluate(x_new, g_new)?;
            *evals += 1;
            if loss_new.is_finite() && loss_new <= loss + c1 * decrease.min(0.0) && decrease < 0.0 {
                return Ok((true, loss_new));
            }
            let t_next = next_trial(t, prev, loss, loss_new, gd);
            prev = Some((t, loss_new));
            t = t_next;
            if t < 1e-10 {
                break;
            }
        }
        Ok((false, loss_new))
    }

    /// The two-loop recursion: `d` = −H g from the curvature pairs, over the free variables when there are bounds
    /// (`alpha` is scratch space, one per pair).
    fn direction(
        &self,
        pairs: &std::collections::VecDeque<Pair>,
        alpha: &mut [f64],
        x: &[f32],
        g: &[f32],
        d: &mut [f32],
    ) {
        d.copy_from_slice(g);
        if let Some(b) = &self.bounds {
            for ((di, xi), gi) in d.iter_mut().zip(x.iter()).zip(g) {
                if b.pinned(*xi, *gi) {
                    *di = 0.0;
                }
            }
        }
        for (i, p) in pairs.iter().enumerate().rev() {
            let a = p.rho * dot(&p.s, d);
            alpha[i] = a;
            axpy(-(a as f32), &p.y, d);
        }
        let gamma = pairs.back().map(|p| {
            let yy = dot(&p.y, &p.y);
            if yy > 0.0 {
                1.0 / (p.rho * yy)
            } else {
                1.0
            }
        });
        let scale = match gamma {
            Some(gm) => gm as f32,
            None => {
                // first step: a move of at most ~1/255 per pixel
                let gmax = g.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                if gmax > 0.0 {
                    (1.0 / 255.0) / gmax
                } else {
                    1.0
                }
            }
        };
        d.iter_mut().for_each(|v| *v *= scale);
        for (i, p) in pairs.iter().enumerate() {
            let b = p.rho * dot(&p.y, d);
            axpy((alpha[i] - b) as f32, &p.s, d);
        }
        d.iter_mut().for_each(|v| *v = -*v);
        if let Some(b) = &self.bounds {
            for ((di, xi), gi) in d.iter_mut().zip(x.iter()).zip(g) {
                if b.pinned(*xi, *gi) {
                    *di = 0.0;
                }
            }
        }
    }
}

/// The next step length of the backtracking line search after a trial at `t` gave `loss_new` (`prev`: the trial
/// before, `loss` and `gd`: the value and directional derivative at 0): the minimiser of the quadratic through
/// f(0), f'(0), f(t), or of the cubic through f(0), f'(0), f(t0), f(t), kept within [0.1 t, 0.5 t]; a tenth of `t`
/// after a non-finite loss.
fn next_trial(t: f64, prev: Option<(f64, f64)>, loss: f64, loss_new: f64, gd: f64) -> f64 {
    let t_next = if !loss_new.is_finite() {
        t * 0.1
    } else {
        match prev {
            None => {
                // minimiser of the quadratic through f(0), f'(0), f(t)
                let denom = 2.0 * (loss_new - loss - gd * t);
                if denom > 0.0 {
                    -gd * t * t / denom
                } else {
                    t * 0.5
                }
            }
            Some((t0, f0)) => {
                // cubic through f(0), f'(0), f(t0), f(t)
                let r1 = loss_new - loss - gd * t;
                let r2 = f0 - loss - gd * t0;
                let a = (r1 / (t * t) - r2 / (t0 * t0)) / (t - t0);
                let b = (-t0 * r1 / (t * t) + t * r2 / (t0 * t0)) / (t - t0);
                if a.abs() < 1e-300 {
                    -gd / (2.0 * b)
                } else {
                    let disc = b * b - 3.0 * a * gd;
                    if disc >= 0.0 {
                        (-b + disc.sqrt()) / (3.0 * a)
                    } else {
                        t * 0.5
                    }
                }
            }
        }
    };
    if t_next.is_finite() {
        t_next.clamp(0.1 * t, 0.5 * t)
    } else {
        0.5 * t
    }
}

/// Keep the curvature pair s = x_new − x, y = g_new − g when it has positive curvature (reusing the oldest pair's
/// buffers when `m` are kept, else a spare's).
fn store_pair(
    pairs: &mut std::collections::VecDeque<Pair>,
    spare: &mut Option<Pair>,
    m: usize,
    (x, x_new): (&[f32], &[f32]),
    (g, g_new): (&[f32], &[f32]),
) {
    let mut p = if pairs.len() == m {
        pairs.pop_front().unwrap()
    } else {
        spare.take().unwrap_or_else(|| Pair { s: vec![0.0; x.len()], y: vec![0.0; x.len()], rho: 0.0 })
    };
    for i in 0..x.len() {
        p.s[i] = x_new[i] - x[i];
        p.y[i] = g_new[i] - g[i];
    }
    let sy = dot(&p.s, &p.y);
    let norms = (dot(&p.s, &p.s) * dot(&p.y, &p.y)).sqrt();
    if sy > 1e-10 * norms && sy > 0.0 {
        p.rho = 1.0 / sy;
        pairs.push_back(p);
    } else {
        *spare = Some(p);
    }
}

#[derive(Debug, Clone)]
pub struct Adam {
    pub learning_rate: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub epsilon: f32,
    pub max_iterations: usize,
    /// Box constraints: every step is projected back into them.
    pub bounds: Option<Bounds>,
}

impl Adam {
    /// Bias-corrected Adam; one evaluation per iteration. On return `x` holds the best point evaluated.
    pub fn minimize(
        &self,
        x: &mut [f32],
        f: &mut dyn Objective,
        on_iter: &mut dyn FnMut(&IterInfo, &[f32]) -> Control,
    ) -> Result<Summary> {
        let n = x.len();
        let mut g = vec![0.0f32; n];
        let mut m1 = vec![0.0f32; n];
        let mut m2 = vec![0.0f32; n];
        let mut best = x.to_vec();
        let mut best_loss = f64::INFINITY;
        let mut reason = StopReason::MaxIterations;
        let mut it = 0usize;
        let mut evals = 0usize;
        if let Some(b) = &self.bounds {
            b.project(x);
        }
        while it < self.max_iterations {
            let loss = f.evaluate(x, &mut g)?;
            evals += 1;
            if !loss.is_finite() {
                anyhow::bail!("the objective became non-finite ({loss}) at Adam iteration {it}: lower --learning-rate");
            }
            if loss < best_loss {
                best_loss = loss;
                best.copy_from_slice(x);
            }
            it += 1;
            let (b1, b2) = (self.beta1, self.beta2);
            let c1 = 1.0 - b1.powi(it as i32);
            let c2 = 1.0 - b2.powi(it as i32);
            for i in 0..n {
                m1[i] = b1 * m1[i] + (1.0 - b1) * g[i];
                m2[i] = b2 * m2[i] + (1.0 - b2) * g[i] * g[i];
                let mh = m1[i] / c1;
                let vh = m2[i] / c2;
                x[i] -= self.learning_rate * mh / (vh.sqrt() + self.epsilon);
            }
            if let Some(b) = &self.bounds {
                b.project(x);
            }
            if on_iter(&IterInfo { iteration: it, evaluations: evals, loss }, x) == Control::Stop {
                reason = StopReason::Callback;
                break;
            }
        }
        x.copy_from_slice(&best);
        Ok(Summary { iterations: it, evaluations: evals, loss: best_loss, reason })
    }
}

/// Early stop on relative loss change over a window.
pub struct EarlyStop {
    window: usize,
    tol: f64,
    history: std::collections::VecDeque<f64>,
}

impl EarlyStop {
    pub fn new(window: usize, tol: f64) -> Self {
        EarlyStop { window: window.max(1), tol, history: std::collections::VecDeque::new() }
    }

    /// True when the loss decreased by less than `tol` (relative) between `window` updates ago and now.
    pub fn update(&mut self, loss: f64) -> bool {
        self.history.push_back(loss);
        if self.history.len() <= self.window {
            return false;
        }
        let old = self.history.pop_front().unwrap();
        let rel = (old - loss) / old.abs().max(1e-300);
        rel < self.tol
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Quadratic {
        diag: Vec<f32>,
        target: Vec<f32>,
    }
    impl Objective for Quadratic {
        fn evaluate(&mut self, x: &[f32], g: &mut [f32]) -> Result<f64> {
            let mut f = 0.0;
            for i in 0..x.len() {
                let d = x[i] - self.target[i];
                f += 0.5 * (self.diag[i] * d * d) as f64;
                g[i] = self.diag[i] * d;
            }
            Ok(f)
        }
    }

    fn quadratic(n: usize) -> Quadratic {
        Quadratic {
            diag: (0..n).map(|i| 1.0 + 99.0 * i as f32 / n as f32).collect(),
            target: (0..n).map(|i| (i as f32 * 0.37).sin()).collect(),
        }
    }

    /// Rosenbrock chain in f64 on f32 parameters.
    struct Rosenbrock {
        evals: usize,
    }
    impl Objective for Rosenbrock {
        fn evaluate(&mut self, x: &[f32], g: &mut [f32]) -> Result<f64> {
            self.evals += 1;
            let n = x.len();
            let mut f = 0.0f64;
            let mut gd = vec![0.0f64; n];
            for i in 0..n - 1 {
                let (a, b) = (x[i] as f64, x[i + 1] as f64);
                f += 100.0 * (b - a * a).powi(2) + (1.0 - a).powi(2);
                gd[i] += -400.0 * a * (b - a * a) - 2.0 * (1.0 - a);
                gd[i + 1] += 200.0 * (b - a * a);
            }
            for i in 0..n {
                g[i] = gd[i] as f32;
            }
            Ok(f)
        }
    }

    fn cont(_: &IterInfo, _: &[f32]) -> Control {
        Control::Continue
    }

    #[test]
    fn lbfgs_solves_an_ill_conditioned_quadratic() {
        let mut q = quadratic(1000);
        let mut x = vec![0.0f32; 1000];
        let s = Lbfgs { history: 10, max_iterations: 200, max_evaluations: 100, bounds: None }
            .minimize(&mut x, &mut q, &mut cont)
            .unwrap();
        let err = x.iter().zip(&q.target).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(err < 1e-4, "max error {err} after {s:?}");
        assert!(s.evaluations <= 100);
    }

    #[test]
    fn adam_solves_a_quadratic() {
        let mut q = quadratic(200);
        let mut x = vec![0.0f32; 200];
        Adam { learning_rate: 0.05, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, max_iterations: 2000, bounds: None }
            .minimize(&mut x, &mut q, &mut cont)
            .unwrap();
        let err = x.iter().zip(&q.target).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(err < 1e-3, "max error {err}");
    }

    #[test]
    fn lbfgs_reaches_the_rosenbrock_minimum() {
        for n in [2usize, 10] {
            let mut f = Rosenbrock { evals: 0 };
            let mut x: Vec<f32> = (0..n).map(|i| if i % 2 == 0 { -1.2 } else { 1.0 }).collect();
            let s = Lbfgs { history: 10, max_iterations: 2000, max_evaluations: 5000, bounds: None }
                .minimize(&mut x, &mut f, &mut cont)
                .unwrap();
            assert!(x.iter().all(|v| (v - 1.0).abs() < 1e-3), "n={n}: {x:?} {s:?}");
        }
    }

    #[test]
    fn callback_stop_and_evaluation_budget() {
        let mut q = quadratic(100);
        let mut x = vec![0.0f32; 100];
        let mut seen = 0;
        let s = Lbfgs { history: 5, max_iterations: 100, max_evaluations: 1000, bounds: None }
            .minimize(&mut x, &mut q, &mut |i: &IterInfo, _: &[f32]| {
                seen = i.iteration;
                if i.iteration == 3 {
                    Control::Stop
                } else {
                    Control::Continue
                }
            })
            .unwrap();
        assert_eq!((s.iterations, s.reason, seen), (3, StopReason::Callback, 3));
        let mut x = vec![0.0f32; 100];
        let mut r = Rosenbrock { evals: 0 };
        let mut x2 = vec![-1.2f32, 1.0];
        let s = Lbfgs { history: 5, max_iterations: 1000, max_evaluations: 7, bounds: None }
            .minimize(&mut x2, &mut r, &mut cont)
            .unwrap();
        assert!(s.evaluations <= 7 && r.evals <= 7, "{s:?}");
        assert_eq!(s.reason, StopReason::MaxEvaluations);
        let s = Adam { learning_rate: 0.1, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, max_iterations: 4, bounds: None }
            .minimize(&mut x, &mut q, &mut cont)
            .unwrap();
        assert_eq!((s.iterations, s.evaluations), (4, 4));
    }

    #[test]
    fn early_stop_needs_a_full_window_and_a_small_change() {
        let mut e = EarlyStop::new(3, 0.01);
        assert!(!e.update(100.0));
        assert!(!e.update(50.0));
        assert!(!e.update(25.0));
        assert!(!e.update(24.0)); // 100 -> 24
        assert!(!e.update(23.9)); // 50 -> 23.9
        assert!(!e.update(23.8)); // 25 -> 23.8: 4.8 %
        assert!(e.update(23.8)); // 24 -> 23.8: 0.83 %
    }

    /// Non-finite losses at long steps are treated as failed trials, not accepted.
    struct Walled(Quadratic);
    impl Objective for Walled {
        fn evaluate(&mut self, x: &[f32], g: &mut [f32]) -> Result<f64> {
            if x.iter().any(|v| v.abs() > 2.0) {
                g.iter_mut().for_each(|v| *v = f32::NAN);
                return Ok(f64::NAN);
            }
            self.0.evaluate(x, g)
        }
    }

    #[test]
    fn nan_trials_shrink_the_step() {
        let mut f = Walled(quadratic(50));
        let target = f.0.target.clone();
        let mut x = vec![0.0f32; 50];
        Lbfgs { history: 10, max_iterations: 300, max_evaluations: 1000, bounds: None }
            .minimize(&mut x, &mut f, &mut cont)
            .unwrap();
        let err = x.iter().zip(&target).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(err < 1e-3, "{err}");
    }

    struct Failing(usize);
    impl Objective for Failing {
        fn evaluate(&mut self, _: &[f32], g: &mut [f32]) -> Result<f64> {
            self.0 += 1;
            if self.0 > 2 {
                anyhow::bail!("device lost");
            }
            g.iter_mut().for_each(|v| *v = 1.0);
            Ok(1.0 * self.0 as f64)
        }
    }

    #[test]
    fn evaluation_errors_propagate() {
        let mut x = vec![0.0f32; 4];
        let e = Lbfgs { history: 3, max_iterations: 10, max_evaluations: 10, bounds: None }.minimize(
            &mut x,
            &mut Failing(0),
            &mut cont,
        );
        assert!(e.unwrap_err().to_string().contains("device lost"));
        let e = Adam { learning_rate: 0.1, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, max_iterations: 10, bounds: None }
            .minimize(&mut x, &mut Failing(0), &mut cont);
        assert!(e.unwrap_err().to_string().contains("device lost"));
    }

    /// A coupled quadratic whose unconstrained minimum lies outside [0, 1] in some coordinates: the bounded
    /// optimisers stay inside the box at every evaluation and reach the constrained minimum (found by projected
    /// gradient descent, run to convergence).
    #[test]
    fn bounded_optimisers_stay_in_the_box_and_reach_the_constrained_minimum() {
        struct Q {
            c: Vec<f32>,
            outside: usize,
        }
        impl Objective for Q {
            fn evaluate(&mut self, x: &[f32], g: &mut [f32]) -> Result<f64> {
                let n = x.len();
                let mut f = 0.0f64;
                for i in 0..n {
                    if !(0.0..=1.0).contains(&x[i]) {
                        self.outside += 1;
                    }
                    // 0.5 * sum (x_i - c_i)^2 * (1 + i) + 0.25 * sum (x_i - x_{i+1})^2
                    let d = (x[i] - self.c[i]) as f64;
                    f += 0.5 * d * d * (1 + i) as f64;
                    g[i] = (d * (1 + i) as f64) as f32;
                }
                for i in 0..n - 1 {
                    let d = (x[i] - x[i + 1]) as f64;
                    f += 0.25 * d * d;
                    g[i] += (0.5 * d) as f32;
                    g[i + 1] -= (0.5 * d) as f32;
                }
                Ok(f)
            }
        }
        let c: Vec<f32> = (0..12).map(|i| -0.8 + 0.25 * i as f32).collect(); // -0.8 … 1.95
                                                                             // reference: projected gradient descent with a small step, to convergence
        let mut r = vec![0.5f32; 12];
        let mut g = vec![0.0f32; 12];
        let mut q = Q { c: c.clone(), outside: 0 };
        for _ in 0..20000 {
            q.evaluate(&r, &mut g).unwrap();
            for (ri, gi) in r.iter_mut().zip(&g) {
                *ri = (*ri - 0.05 * gi).clamp(0.0, 1.0);
            }
        }
        let mut cont = |_: &IterInfo, _: &[f32]| Control::Continue;
        let mut x = vec![2.0f32; 12]; // starts outside: projected first
        let mut f = Q { c: c.clone(), outside: 0 };
        let s = Lbfgs { history: 5, max_iterations: 200, max_evaluations: 400, bounds: Some(Bounds::UNIT) }
            .minimize(&mut x, &mut f, &mut cont)
            .unwrap();
        assert_eq!(f.outside, 0, "an evaluation outside the bounds");
        for (a, b) in x.iter().zip(&r) {
            assert!((a - b).abs() < 1e-3, "L-BFGS {x:?} vs reference {r:?}");
        }
        let mut check = vec![0.0f32; 12];
        assert!((s.loss - Q { c: c.clone(), outside: 0 }.evaluate(&x, &mut check).unwrap()).abs() < 1e-9);
        let mut x = vec![0.5f32; 12];
        let mut f = Q { c, outside: 0 };
        Adam {
            learning_rate: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            max_iterations: 3000,
            bounds: Some(Bounds::UNIT),
        }
        .minimize(&mut x, &mut f, &mut cont)
        .unwrap();
        assert_eq!(f.outside, 0);
        for (a, b) in x.iter().zip(&r) {
            assert!((a - b).abs() < 2e-2, "Adam {x:?} vs reference {r:?}");
        }
    }
}
