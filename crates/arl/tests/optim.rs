//! The optimizer pieces against references: AdamW against candle-nn's (same decoupled
//! weight-decay convention, `p (1 - lr wd)`), the learning-rate schedule and gradient clipping
//! against numbers worked out by hand.

use arl::optim::{clip_grads, global_norm, AdamW, LrSchedule, OptimConfig};
use candle_core::{Device, Tensor, Var};
use candle_nn::Optimizer;

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn vars(seed: f32) -> Vec<Var> {
    let d = &Device::Cpu;
    vec![
        Var::from_vec(vec![0.5f32, -1.0, 2.0, 0.25, -0.75, 1.5], (2, 3), d).unwrap(),
        Var::from_vec(vec![seed, -seed, 0.1], 3, d).unwrap(),
    ]
}

#[test]
fn adamw_matches_candle_nn() {
    let cfg = OptimConfig {
        lr: 0.05,
        beta1: 0.8,
        beta2: 0.95,
        eps: 1e-6,
        weight_decay: 0.1,
        ..OptimConfig::default()
    };
    let ours: Vec<(String, Var)> = vars(0.3)
        .into_iter()
        .enumerate()
        .map(|(i, v)| (format!("p{i}"), v))
        .collect();
    let theirs = vars(0.3);
    let mut adam = AdamW::new(&ours, cfg.clone()).unwrap();
    let mut reference = candle_nn::AdamW::new(
        theirs.clone(),
        candle_nn::ParamsAdamW {
            lr: cfg.lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
        },
    )
    .unwrap();
    // a loss whose gradient changes with the parameters and the step: sum(c_t * p + p³)
    for (step, lr) in [0.05, 0.02, 0.05, 0.01, 0.03].into_iter().enumerate() {
        let c = (step as f64 + 1.0) * 0.7 - 2.0;
        let loss = |vs: &[Var]| {
            vs.iter()
                .map(|v| {
                    ((v.as_tensor() * c).unwrap() + v.as_tensor().powf(3.0).unwrap())
                        .unwrap()
                        .sum_all()
                        .unwrap()
                })
                .reduce(|a, b| (a + b).unwrap())
                .unwrap()
        };
        let ours_vars: Vec<Var> = ours.iter().map(|(_, v)| v.clone()).collect();
        let store = loss(&ours_vars).backward().unwrap();
        let grads: Vec<Tensor> = ours_vars
            .iter()
            .map(|v| store.get(v.as_tensor()).unwrap().clone())
            .collect();
        adam.step(&ours, &grads, lr).unwrap();
        reference.set_learning_rate(lr);
        reference.step(&loss(&theirs).backward().unwrap()).unwrap();
        for ((_, a), b) in ours.iter().zip(&theirs) {
            for (x, y) in values(a.as_tensor()).iter().zip(values(b.as_tensor())) {
                assert!(
                    (x - y).abs() <= 1e-6 * (1.0 + y.abs()),
                    "step {}: ours {x}, candle-nn {y}",
                    step + 1
                );
            }
        }
    }
    assert_eq!(adam.t, 5);
}

/// The in-place update (contiguous f32 on the CPU) against the tensor expressions it replaces,
/// which a non-contiguous gradient still takes: the same bits, step after step. A snapshot
/// taken in between is left alone by later steps.
#[test]
fn in_place_adamw_has_the_bits_of_the_tensor_expressions() {
    let cfg = OptimConfig {
        lr: 0.05,
        beta1: 0.8,
        beta2: 0.95,
        eps: 1e-6,
        weight_decay: 0.1,
        ..OptimConfig::default()
    };
    let d = &Device::Cpu;
    // the [2, 3] var; a transposed [3, 2] gradient is non-contiguous
    let var = |vs: Vec<Var>| vec![("p".to_string(), vs[0].clone())];
    let (fast, slow) = (var(vars(0.3)), var(vars(0.3)));
    let grad = |step: usize| {
        let s = step as f32;
        let g: Vec<f32> = (0..6)
            .map(|i| (i as f32 - 2.5) * (s + 1.0) * 0.37 - s)
            .collect();
        Tensor::from_vec(g, (3, 2), d).unwrap().t().unwrap()
    };
    let lr = |step: usize| 0.05 / (step + 1) as f64;
    let bits =
        |v: &Var| -> Vec<u32> { values(v.as_tensor()).iter().map(|x| x.to_bits()).collect() };
    let mut a = AdamW::new(&fast, cfg.clone()).unwrap();
    let mut b = AdamW::new(&slow, cfg).unwrap();
    let (mut kept, mut after) = (None, Vec::new());
    for step in 0..6 {
        assert!(!grad(step).is_contiguous());
        a.step(&fast, &[grad(step).contiguous().unwrap()], lr(step))
            .unwrap();
        b.step(&slow, &[grad(step)], lr(step)).unwrap();
        assert_eq!(bits(&fast[0].1), bits(&slow[0].1), "step {}", step + 1);
        after.push(bits(&fast[0].1));
        if step == 2 {
            kept = Some((a.snapshot().unwrap(), fast[0].1.as_tensor().copy().unwrap()));
        }
    }
    // from the snapshot after step 3, step 4 again: the parameters step 4 gave the first time
    let (mut snap, params) = kept.unwrap();
    let again = vec![("p".to_string(), Var::from_tensor(&params).unwrap())];
    snap.step(&again, &[grad(3).contiguous().unwrap()], lr(3))
        .unwrap();
    assert_eq!(bits(&again[0].1), after[3]);
}

/// The first update by hand: with zero moments, `m̂ = g` and `v̂ = g²`, so each parameter
/// moves by `lr · g / (|g| + eps)` plus the decay.
#[test]
fn the_first_adamw_step_is_sign_sized() {
    let cfg = OptimConfig {
        lr: 0.1,
        weight_decay: 0.5,
        eps: 0.0,
        ..OptimConfig::default()
    };
    let v = Var::from_vec(vec![1.0f32, -2.0], 2, &Device::Cpu).unwrap();
    let named = vec![("p".to_string(), v.clone())];
    let mut adam = AdamW::new(&named, cfg).unwrap();
    let g = Tensor::from_vec(vec![0.004f32, -30.0], 2, &Device::Cpu).unwrap();
    adam.step(&named, &[g], 0.1).unwrap();
    // 1 · (1 - 0.05) - 0.1 = 0.85; -2 · 0.95 + 0.1 = -1.8
    let got = values(v.as_tensor());
    assert!((got[0] - 0.85).abs() < 1e-6, "{got:?}");
    assert!((got[1] + 1.8).abs() < 1e-6, "{got:?}");
}

#[test]
fn learning_rate_warmup_then_cosine() {
    let cfg = OptimConfig {
        lr: 1.0,
        warmup_steps: 4,
        schedule: LrSchedule::Cosine,
        min_lr_ratio: 0.1,
        ..OptimConfig::default()
    };
    let total = 14; // 4 warmup + 10 cosine steps
    let cases = [
        (0, 0.25),
        (1, 0.5),
        (3, 1.0),
        (4, 1.0), // cosine starts at the peak
        // progress 2/10: 0.1 + 0.9 · (1 + cos(0.2π)) / 2
        (6, 0.1 + 0.45 * (1.0 + 0.809_016_994_374_947_5)),
        (9, 0.55), // halfway
        (14, 0.1),
        (20, 0.1), // past the end: stays at the floor
    ];
    for (t, want) in cases {
        let got = cfg.lr_at(t, total);
        assert!(
            (got - want).abs() < 1e-12,
            "lr_at({t}) = {got}, want {want}"
        );
    }
    let constant = OptimConfig {
        lr: 0.3,
        warmup_steps: 2,
        schedule: LrSchedule::Constant,
        ..OptimConfig::default()
    };
    let got: Vec<f64> = (0..4).map(|t| constant.lr_at(t, 10)).collect();
    assert_eq!(got, vec![0.15, 0.3, 0.3, 0.3]);
    let no_warmup = OptimConfig {
        warmup_steps: 0,
        ..cfg
    };
    assert_eq!(no_warmup.lr_at(0, 10), 1.0);
    assert!((no_warmup.lr_at(5, 10) - 0.55).abs() < 1e-12);
}

#[test]
fn clipping_scales_to_the_global_norm() {
    let d = &Device::Cpu;
    let grads = || {
        vec![
            Tensor::from_vec(vec![3.0f32, 4.0], 2, d).unwrap(),
            Tensor::from_vec(vec![12.0f32], 1, d).unwrap(),
        ]
    };
    let norm = global_norm(&grads()).unwrap();
    assert!((norm - 13.0).abs() < 1e-9, "{norm}"); // sqrt(9 + 16 + 144)

    let mut g = grads();
    clip_grads(&mut g, norm, 6.5).unwrap();
    let (a, b) = (values(&g[0]), values(&g[1]));
    for (x, want) in a.iter().chain(&b).zip([1.5f32, 2.0, 6.0]) {
        assert!((x - want).abs() < 1e-5, "{a:?} {b:?}");
    }
    assert!((global_norm(&g).unwrap() - 6.5).abs() < 1e-5);

    // under the limit, or clipping off: untouched
    for max in [13.5, 0.0] {
        let mut g = grads();
        clip_grads(&mut g, norm, max).unwrap();
        assert_eq!(values(&g[0]), vec![3.0, 4.0]);
        assert_eq!(values(&g[1]), vec![12.0]);
    }
    // NaN propagates to the caller, which skips the step
    let nan = vec![Tensor::from_vec(vec![f32::NAN, 1.0], 2, d).unwrap()];
    assert!(global_norm(&nan).unwrap().is_nan());
}
