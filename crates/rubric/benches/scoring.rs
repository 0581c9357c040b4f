//! Scoring throughput on a synthetic HealthBench-shaped set: 500 examples × 8 responses.
use criterion::{criterion_group, criterion_main, Criterion as Bench};
use rubric::score::{reward_vector, summarize, BOOTSTRAP_RESAMPLES};
use rubric::{Criterion, Example, MetaClasses, Verdict};

/// An example, the class of each criterion, and per response the verdict of each criterion.
type Graded = (Example, Vec<usize>, Vec<Vec<Verdict>>);

fn data() -> Vec<Graded> {
    let axes = rubric::HEALTHBENCH_AXES;
    (0..500)
        .map(|i| {
            let criteria: Vec<Criterion> = (0..12)
                .map(|j| Criterion {
                    text: format!("criterion {j}"),
                    points: if j % 3 == 2 { -3.0 } else { (j % 7 + 1) as f64 },
                    tags: vec![format!("axis:{}", axes[(i + j) % 5])],
                    check: None,
                })
                .collect();
            let ex = Example {
                id: format!("p{i}"),
                prompt: vec![],
                criteria,
                tags: vec![],
                ideal_completion: None,
                canary: None,
                line: i + 1,
            };
            let mc = MetaClasses::axes();
            let class_of = (0..12).map(|j| mc.class_of(&ex, j).unwrap()).collect();
            let verdicts = (0..8)
                .map(|r| {
                    (0..12)
                        .map(|j| Verdict {
                            criterion: j,
                            outcome: Ok(((i + j + r) % 2) as f64),
                            explanation: String::new(),
                            judge: "bench".into(),
                            cached: false,
                            attempts: 1,
                        })
                        .collect()
                })
                .collect();
            (ex, class_of, verdicts)
        })
        .collect()
}

fn bench(c: &mut Bench) {
    let d = data();
    c.bench_function("reward vectors 500x8", |b| {
        b.iter(|| {
            let mut n = 0;
            for (ex, class_of, vs) in &d {
                for v in vs {
                    n += reward_vector(ex, class_of, 5, v).overall.is_some() as usize;
                }
            }
            n
        })
    });
    let values: Vec<f64> = (0..4000).map(|i| (i % 10) as f64 / 10.0).collect();
    c.bench_function("bootstrap std 4000 rows x 1000", |b| {
        b.iter(|| summarize(&values, BOOTSTRAP_RESAMPLES, 0))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
