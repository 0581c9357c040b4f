//! Meta-classes: the groups of criteria that ARL-RR optimizes one at a time.

use crate::model::{Dataset, Example};
use crate::DataError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// HealthBench's five axes, in the order the benchmark reports them.
pub const HEALTHBENCH_AXES: [&str; 5] = [
    "accuracy",
    "completeness",
    "communication_quality",
    "context_awareness",
    "instruction_following",
];

/// How criteria are grouped. In TOML: `"axis"`, `"cluster"`, `"theme"` or
/// `{ mapping = "classes.toml" }`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassScheme {
    /// By the criterion's `axis:` tag (the default).
    #[default]
    Axis,
    /// By the criterion's `cluster:` tag (HealthBench consensus criteria).
    Cluster,
    /// By the example's `theme:` tag: every criterion of an example falls in its theme.
    Theme,
    /// By a TOML file of `[[class]] name = "..." tags = ["axis:accuracy", ...]`; a criterion
    /// belongs to the first class listing one of its tags or of its example's tags.
    Mapping(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassSpec {
    pub scheme: ClassScheme,
    /// Class for criteria no rule claims; without it such a criterion is an error.
    pub catch_all: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    #[serde(default)]
    catch_all: Option<String>,
    class: Vec<MappingClass>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingClass {
    name: String,
    tags: Vec<String>,
}

/// The class names and the rule that puts each criterion in one of them.
#[derive(Debug, Clone, PartialEq)]
pub struct MetaClasses {
    pub names: Vec<String>,
    rule: Rule,
    catch_all: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
enum Rule {
    CriterionTag(&'static str),
    ExampleTag(&'static str),
    Mapping(Vec<Vec<String>>),
}

/// For each example, the class index of each of its criteria.
pub type Assignment = Vec<Vec<usize>>;

impl MetaClasses {
    /// Builds the class list from a spec. Class names that come from the data (clusters,
    /// themes, extra axes) are collected over all `datasets`, so train and validation splits
    /// share one indexing.
    pub fn new(spec: &ClassSpec, datasets: &[&Dataset]) -> Result<MetaClasses, DataError> {
        let (mut names, rule, mut catch_all_name) = match &spec.scheme {
            ClassScheme::Axis => {
                let mut names: Vec<String> =
                    HEALTHBENCH_AXES.iter().map(|s| s.to_string()).collect();
                let extra: BTreeSet<String> = criterion_tags(datasets, "axis")
                    .into_iter()
                    .filter(|a| !names.contains(a))
                    .collect();
                names.extend(extra);
                (names, Rule::CriterionTag("axis"), None)
            }
            ClassScheme::Cluster => (
                criterion_tags(datasets, "cluster").into_iter().collect(),
                Rule::CriterionTag("cluster"),
                None,
            ),
            ClassScheme::Theme => {
                let themes: BTreeSet<String> = datasets
                    .iter()
                    .flat_map(|d| d.examples.iter())
                    .filter_map(|e| e.tag_value("theme").map(str::to_string))
                    .collect();
                (
                    themes.into_iter().collect(),
                    Rule::ExampleTag("theme"),
                    None,
                )
            }
            ClassScheme::Mapping(path) => {
                let m = read_mapping(path)?;
                let names = m.class.iter().map(|c| c.name.clone()).collect();
                let tags = m.class.into_iter().map(|c| c.tags).collect();
                (names, Rule::Mapping(tags), m.catch_all)
            }
        };
        if spec.catch_all.is_some() {
            catch_all_name = spec.catch_all.clone();
        }
        let catch_all = catch_all_name.map(|name| match names.iter().position(|n| *n == name) {
            Some(i) => i,
            None => {
                names.push(name);
                names.len() - 1
            }
        });
        Ok(MetaClasses {
            names,
            rule,
            catch_all,
        })
    }

    /// The default: HealthBench axes.
    pub fn axes() -> MetaClasses {
        MetaClasses::new(&ClassSpec::default(), &[]).expect("the axis scheme needs no file")
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The class of one criterion, or `None` when no rule claims it and there is no catch-all.
    pub fn class_of(&self, example: &Example, criterion: usize) -> Option<usize> {
        let c = &example.criteria[criterion];
        let found = match &self.rule {
            Rule::CriterionTag(prefix) => c.tag_value(prefix).and_then(|v| self.index(v)),
            Rule::ExampleTag(prefix) => example.tag_value(prefix).and_then(|v| self.index(v)),
            Rule::Mapping(tags) => tags.iter().position(|class_tags| {
                c.tags
                    .iter()
                    .chain(example.tags.iter())
                    .any(|t| class_tags.contains(t))
            }),
        };
        found.or(self.catch_all)
    }

    /// Classes of every criterion of one example.
    pub fn assign_example(
        &self,
        dataset: &Dataset,
        example: &Example,
    ) -> Result<Vec<usize>, DataError> {
        (0..example.criteria.len())
            .map(|i| {
                self.class_of(example, i).ok_or_else(|| {
                    DataError::new(
                        &dataset.source,
                        example.line,
                        format!("rubrics[{i}].tags"),
                        format!(
                            "criterion of `{}` belongs to no meta-class ({}); tags {:?}; name a \
                             catch-all class to accept it",
                            example.id,
                            self.describe(),
                            example.criteria[i].tags
                        ),
                    )
                })
            })
            .collect()
    }

    /// Classes of every criterion of every example; the first unclaimed criterion is an error.
    pub fn assign(&self, dataset: &Dataset) -> Result<Assignment, DataError> {
        dataset
            .examples
            .iter()
            .map(|e| self.assign_example(dataset, e))
            .collect()
    }

    fn describe(&self) -> String {
        match &self.rule {
            Rule::CriterionTag(p) => format!("scheme: criterion tag `{p}:`"),
            Rule::ExampleTag(p) => format!("scheme: example tag `{p}:`"),
            Rule::Mapping(_) => "scheme: mapping file".to_string(),
        }
    }
}

fn criterion_tags(datasets: &[&Dataset], prefix: &str) -> BTreeSet<String> {
    datasets
        .iter()
        .flat_map(|d| d.examples.iter())
        .flat_map(|e| e.criteria.iter())
        .filter_map(|c| c.tag_value(prefix).map(str::to_string))
        .collect()
}

fn read_mapping(path: &Path) -> Result<MappingFile, DataError> {
    let text = crate::read_text(path)?;
    let m: MappingFile = toml::from_str(&text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start].matches('\n').count() + 1)
            .unwrap_or(0);
        DataError::new(path, line, "(toml)", e.message().to_string())
    })?;
    if m.class.is_empty() {
        return Err(DataError::new(path, 0, "class", "no [[class]] entries"));
    }
    let mut seen = BTreeSet::new();
    for c in &m.class {
        if !seen.insert(&c.name) {
            return Err(DataError::new(
                path,
                0,
                "class.name",
                format!("duplicate class `{}`", c.name),
            ));
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::parse;
    use crate::model::Format;

    fn data() -> Dataset {
        let text = r#"{"prompt":[{"role":"user","content":"q"}],"prompt_id":"a","example_tags":["theme:hedging"],"rubrics":[{"criterion":"x","points":3,"tags":["axis:accuracy","cluster:c1"]},{"criterion":"y","points":2,"tags":["axis:completeness"]}]}"#;
        parse(Path::new("d.jsonl"), text, Format::HealthBench).unwrap()
    }

    #[test]
    fn axis_scheme_is_default_and_ordered() {
        let d = data();
        let mc = MetaClasses::new(&ClassSpec::default(), &[&d]).unwrap();
        assert_eq!(mc.names, HEALTHBENCH_AXES.to_vec());
        assert_eq!(mc.assign(&d).unwrap(), vec![vec![0, 1]]);
    }

    #[test]
    fn cluster_needs_catch_all() {
        let d = data();
        let spec = ClassSpec {
            scheme: ClassScheme::Cluster,
            catch_all: None,
        };
        let mc = MetaClasses::new(&spec, &[&d]).unwrap();
        let err = mc.assign(&d).unwrap_err();
        assert_eq!(err.field, "rubrics[1].tags");
        assert_eq!(err.line, 1);
        let spec = ClassSpec {
            scheme: ClassScheme::Cluster,
            catch_all: Some("other".into()),
        };
        let mc = MetaClasses::new(&spec, &[&d]).unwrap();
        assert_eq!(mc.names, vec!["c1", "other"]);
        assert_eq!(mc.assign(&d).unwrap(), vec![vec![0, 1]]);
    }

    #[test]
    fn theme_and_mapping() {
        let d = data();
        let spec = ClassSpec {
            scheme: ClassScheme::Theme,
            catch_all: None,
        };
        let mc = MetaClasses::new(&spec, &[&d]).unwrap();
        assert_eq!(mc.assign(&d).unwrap(), vec![vec![0, 0]]);

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.toml");
        std::fs::write(
            &p,
            "[[class]]\nname = \"fact\"\ntags = [\"axis:accuracy\"]\n[[class]]\nname = \"rest\"\ntags = [\"theme:hedging\"]\n",
        )
        .unwrap();
        let spec = ClassSpec {
            scheme: ClassScheme::Mapping(p.clone()),
            catch_all: None,
        };
        let mc = MetaClasses::new(&spec, &[&d]).unwrap();
        assert_eq!(mc.names, vec!["fact", "rest"]);
        assert_eq!(mc.assign(&d).unwrap(), vec![vec![0, 1]]);

        std::fs::write(&p, "[[class]]\nname = 3\n").unwrap();
        let err = MetaClasses::new(&spec, &[]).unwrap_err();
        assert_eq!(err.line, 2, "{err}");
    }
}
