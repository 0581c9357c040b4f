//! The task as a schedule sees it: the data splits, the meta-class of every criterion, the
//! classes that can give a signal, and the weights the `deficit` selector ranks by.

use anyhow::Result;
use rubric::classes::Assignment;
use rubric::{Dataset, MetaClasses};

/// Training and validation data with their meta-class assignment.
pub struct TaskData {
    pub train: Dataset,
    pub val: Dataset,
    /// Held-out split scored at the start and the end of a run (`data.test`), never used for
    /// selection.
    pub test: Option<Dataset>,
    pub classes: MetaClasses,
    pub train_classes: Assignment,
    pub val_classes: Assignment,
    /// Classes with a positive-point criterion in the training data (the others give no
    /// signal and are never selected).
    pub trainable: Vec<usize>,
    /// Each class's share of the positive points of the selectors' fixed batch (`deficit`).
    pub select_weights: Vec<f64>,
}

impl TaskData {
    pub fn new(
        train: Dataset,
        val: Dataset,
        spec: &rubric::ClassSpec,
        select_size: usize,
    ) -> Result<TaskData> {
        anyhow::ensure!(
            !train.is_empty(),
            "{}: no training examples",
            train.source.display()
        );
        anyhow::ensure!(
            !val.is_empty(),
            "{}: no validation examples",
            val.source.display()
        );
        let classes = MetaClasses::new(spec, &[&train, &val])?;
        let train_classes = classes.assign(&train)?;
        let val_classes = classes.assign(&val)?;
        let k = classes.len();
        let positive_points = |d: &Dataset, a: &Assignment, n: usize| {
            let mut w = vec![0.0; k];
            for (ex, cl) in d.examples.iter().zip(a).take(n) {
                for (c, &ci) in ex.criteria.iter().zip(cl) {
                    if c.points > 0.0 {
                        w[ci] += c.points;
                    }
                }
            }
            w
        };
        let trainable = positive_points(&train, &train_classes, usize::MAX)
            .iter()
            .enumerate()
            .filter(|(_, p)| **p > 0.0)
            .map(|(i, _)| i)
            .collect();
        let mut select_weights = positive_points(&val, &val_classes, select_size.max(1));
        let total: f64 = select_weights.iter().sum::<f64>().max(1e-12);
        select_weights.iter_mut().for_each(|w| *w /= total);
        Ok(TaskData {
            train,
            val,
            test: None,
            classes,
            train_classes,
            val_classes,
            trainable,
            select_weights,
        })
    }
}
