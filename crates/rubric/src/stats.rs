//! Counts that describe a data file, as `arlrr data stats` prints them.

use crate::model::Dataset;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AxisCount {
    pub criteria: usize,
    pub positive: usize,
    pub negative: usize,
    /// Examples with at least one criterion on this axis.
    pub examples: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataStats {
    pub file: String,
    pub format: crate::Format,
    pub examples: usize,
    pub criteria: usize,
    pub positive: usize,
    pub negative: usize,
    /// Criteria with a machine-checkable `check`.
    pub checkable: usize,
    pub with_ideal_completion: usize,
    /// Criteria per axis; criteria without an `axis:` tag are under `(none)`.
    pub axes: BTreeMap<String, AxisCount>,
    /// Examples per `theme:` tag.
    pub themes: BTreeMap<String, usize>,
    /// Examples by number of user turns.
    pub turns: BTreeMap<usize, usize>,
}

impl DataStats {
    pub fn of(d: &Dataset) -> DataStats {
        let mut s = DataStats {
            file: d.source.display().to_string(),
            format: d.format,
            examples: d.len(),
            criteria: 0,
            positive: 0,
            negative: 0,
            checkable: 0,
            with_ideal_completion: 0,
            axes: BTreeMap::new(),
            themes: BTreeMap::new(),
            turns: BTreeMap::new(),
        };
        for ex in &d.examples {
            let mut axes_here = std::collections::BTreeSet::new();
            for c in &ex.criteria {
                s.criteria += 1;
                let axis = c.tag_value("axis").unwrap_or("(none)").to_string();
                let a = s.axes.entry(axis.clone()).or_default();
                a.criteria += 1;
                if c.points > 0.0 {
                    s.positive += 1;
                    a.positive += 1;
                } else if c.points < 0.0 {
                    s.negative += 1;
                    a.negative += 1;
                }
                s.checkable += c.check.is_some() as usize;
                axes_here.insert(axis);
            }
            for a in axes_here {
                s.axes.get_mut(&a).expect("inserted above").examples += 1;
            }
            for t in ex.tags.iter().filter_map(|t| t.strip_prefix("theme:")) {
                *s.themes.entry(t.to_string()).or_default() += 1;
            }
            *s.turns.entry(ex.user_turns()).or_default() += 1;
            s.with_ideal_completion += ex.ideal_completion.is_some() as usize;
        }
        s
    }
}

impl fmt::Display for DataStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "file        {} ({:?})", self.file, self.format)?;
        writeln!(f, "examples    {}", self.examples)?;
        writeln!(
            f,
            "criteria    {} ({} positive, {} negative, {} zero-point; {} checkable)",
            self.criteria,
            self.positive,
            self.negative,
            self.criteria - self.positive - self.negative,
            self.checkable
        )?;
        writeln!(f, "ideal completions  {}", self.with_ideal_completion)?;
        writeln!(
            f,
            "\naxis                         criteria  positive  negative  examples"
        )?;
        for (name, a) in &self.axes {
            writeln!(
                f,
                "{name:<28} {:>9} {:>9} {:>9} {:>9}",
                a.criteria, a.positive, a.negative, a.examples
            )?;
        }
        if !self.themes.is_empty() {
            writeln!(f, "\ntheme                        examples")?;
            for (name, n) in &self.themes {
                writeln!(f, "{name:<28} {n:>9}")?;
            }
        }
        writeln!(f, "\nuser turns  examples")?;
        for (t, n) in &self.turns {
            writeln!(f, "{t:>10} {n:>9}")?;
        }
        Ok(())
    }
}
