//! The grid file of `arlrr study`: a base run config, regime axes whose product is the grid,
//! the methods, the seeds and the learning-rate candidates every method is tuned over.

use crate::noise::NoiseConfig;
use crate::TrainConfig;
use anyhow::{bail, ensure, Context, Result};
use schedule::{ObjectiveKind, ScaleRewards, SelectorKind};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The regime keys a grid may vary, in the order regime names list them.
pub const REGIME_KEYS: [&str; 4] = ["noise", "conflict", "scale_rewards", "shape"];

/// The variants an `alternating:<selector>` method may add with `+name`.
pub const VARIANTS: [&str; 3] = ["guard", "paired", "anchored"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GridFile {
    study: StudySection,
    #[serde(default)]
    regimes: BTreeMap<String, Vec<toml::Value>>,
    #[serde(default)]
    variants: VariantParams,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StudySection {
    base: PathBuf,
    methods: Vec<String>,
    seeds: u64,
    steps: u64,
    lrs: Vec<f64>,
    #[serde(default)]
    tune_seeds: u64,
    #[serde(default)]
    jobs: usize,
    #[serde(default = "yes")]
    grade_active_class_only: bool,
}

fn yes() -> bool {
    true
}

/// `[variants]`: the parameters of the ARL-RR variants, shared by every method using them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VariantParams {
    /// `+guard`: `phases.guard_drop`.
    pub guard_drop: f64,
    /// `+paired`: `phases.select_samples` while paired (0 = the base config's).
    pub paired_samples: usize,
    /// `+anchored`: `objective.anchor` (λ).
    pub anchor: f64,
}

impl Default for VariantParams {
    fn default() -> Self {
        VariantParams {
            guard_drop: 0.05,
            paired_samples: 8,
            anchor: 0.5,
        }
    }
}

/// One contender of the study: an objective, its selector and variants.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyMethod {
    pub name: String,
    pub objective: ObjectiveKind,
    pub selector: Option<SelectorKind>,
    pub variants: Vec<String>,
}

impl StudyMethod {
    /// `scalarized`, `gdpo`, or `alternating:<selector>` with `+guard`, `+paired`,
    /// `+anchored` added in any combination.
    pub fn parse(s: &str) -> Result<StudyMethod> {
        let mut parts = s.split('+');
        let head = parts.next().unwrap_or_default();
        let m = crate::compare::Method::parse(head)?;
        let variants: Vec<String> = parts.map(str::to_string).collect();
        for v in &variants {
            if !VARIANTS.contains(&v.as_str()) {
                bail!(
                    "unknown variant `+{v}` in method `{s}` (variants: {})",
                    VARIANTS.map(|v| format!("+{v}")).join(", ")
                );
            }
            if m.selector.is_none() {
                bail!("method `{s}`: variants need `alternating:<selector>`");
            }
            if (v == "paired" || v == "guard") && m.selector != Some(SelectorKind::Lookahead) {
                bail!("method `{s}`: `+{v}` needs the lookahead selector");
            }
        }
        Ok(StudyMethod {
            name: s.to_string(),
            objective: m.objective,
            selector: m.selector,
            variants,
        })
    }

    pub fn has(&self, variant: &str) -> bool {
        self.variants.iter().any(|v| v == variant)
    }

    pub fn alternating(&self) -> bool {
        self.objective == ObjectiveKind::Alternating
    }

    /// The folder name of its runs.
    pub fn slug(&self) -> String {
        self.name.replace(':', "-")
    }
}

/// One setting of every regime axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Regime {
    /// `(key, value)` in [`REGIME_KEYS`] order, only the keys the grid varies.
    pub settings: Vec<(String, toml::Value)>,
}

impl Regime {
    /// `noise=exact conflict=1`: the row label.
    pub fn label(&self) -> String {
        if self.settings.is_empty() {
            return "base".into();
        }
        self.settings
            .iter()
            .map(|(k, v)| format!("{k}={}", show(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The folder name of its runs.
    pub fn slug(&self) -> String {
        if self.settings.is_empty() {
            return "base".into();
        }
        self.settings
            .iter()
            .map(|(k, v)| format!("{k}-{}", show(v)))
            .collect::<Vec<_>>()
            .join("_")
    }
}

/// A TOML value as the grid wrote it, without quotes.
pub fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A parsed, checked grid.
#[derive(Debug, Clone)]
pub struct Grid {
    pub path: PathBuf,
    /// The base run config, resolved (relative paths against its folder).
    pub base_path: PathBuf,
    pub base: TrainConfig,
    pub regimes: Vec<Regime>,
    pub methods: Vec<StudyMethod>,
    pub seeds: u64,
    /// Seeds (the first ones) each learning rate is tried on before the best is kept.
    pub tune_seeds: u64,
    pub steps: u64,
    pub lrs: Vec<f64>,
    /// Runs at once (0 = the core count).
    pub jobs: usize,
    pub grade_active_class_only: bool,
    pub variants: VariantParams,
}

impl Grid {
    /// Reads and checks a grid file; every error is one line naming the file and field.
    pub fn from_file(path: &Path) -> Result<Grid> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read grid {}", path.display()))?;
        Grid::parse(&text, path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    fn parse(text: &str, path: &Path) -> Result<Grid> {
        let file: GridFile = crate::config::parse_toml(text)?;
        let s = &file.study;
        ensure_field(s.seeds > 0, "study.seeds", "at least 1")?;
        ensure_field(s.steps > 0, "study.steps", "at least 1")?;
        ensure_field(
            !s.lrs.is_empty(),
            "study.lrs",
            "empty: give at least one rate",
        )?;
        for (i, lr) in s.lrs.iter().enumerate() {
            ensure_field(
                lr.is_finite() && *lr > 0.0,
                &format!("study.lrs[{i}]"),
                "must be a positive number",
            )?;
        }
        ensure_field(
            s.tune_seeds <= s.seeds,
            "study.tune_seeds",
            "more than study.seeds",
        )?;
        ensure_field(
            !s.methods.is_empty(),
            "study.methods",
            "empty: name a method",
        )?;
        let mut methods = Vec::new();
        for (i, m) in s.methods.iter().enumerate() {
            let method = StudyMethod::parse(m)
                .map_err(|e| anyhow::anyhow!("field `study.methods[{i}]`: {e}"))?;
            if methods.iter().any(|x: &StudyMethod| x.name == method.name) {
                bail!("field `study.methods[{i}]`: `{m}` is listed twice");
            }
            methods.push(method);
        }
        let v = &file.variants;
        ensure_field(
            v.guard_drop.is_finite() && v.guard_drop > 0.0,
            "variants.guard_drop",
            "must be a positive number",
        )?;
        ensure_field(
            v.anchor > 0.0 && v.anchor <= 1.0,
            "variants.anchor",
            "must be in (0, 1]",
        )?;

        let base_path = path.parent().unwrap_or(Path::new(".")).join(&s.base);
        let base = TrainConfig::from_file(&base_path)
            .map_err(|e| anyhow::anyhow!("field `study.base`: {e}"))?;
        for key in file.regimes.keys() {
            if !REGIME_KEYS.contains(&key.as_str()) {
                bail!(
                    "field `regimes.{key}`: no such regime key (keys: {})",
                    REGIME_KEYS.join(", ")
                );
            }
        }
        let mut axes: Vec<Vec<(String, toml::Value)>> = Vec::new();
        for key in REGIME_KEYS {
            let Some(values) = file.regimes.get(key) else {
                continue;
            };
            ensure_field(
                !values.is_empty(),
                &format!("regimes.{key}"),
                "empty axis: give at least one value",
            )?;
            for (i, value) in values.iter().enumerate() {
                check_setting(key, value, &base)
                    .map_err(|e| anyhow::anyhow!("field `regimes.{key}[{i}]`: {e}"))?;
            }
            axes.push(
                values
                    .iter()
                    .map(|v| (key.to_string(), v.clone()))
                    .collect(),
            );
        }
        let mut regimes = vec![Regime {
            settings: Vec::new(),
        }];
        for axis in axes {
            regimes = regimes
                .iter()
                .flat_map(|r| {
                    axis.iter().map(move |setting| {
                        let mut settings = r.settings.clone();
                        settings.push(setting.clone());
                        Regime { settings }
                    })
                })
                .collect();
        }
        let grid = Grid {
            path: path.to_path_buf(),
            base_path,
            base,
            regimes,
            methods,
            seeds: s.seeds,
            tune_seeds: if s.tune_seeds == 0 {
                s.seeds
            } else {
                s.tune_seeds
            },
            steps: s.steps,
            lrs: s.lrs.clone(),
            jobs: s.jobs,
            grade_active_class_only: s.grade_active_class_only,
            variants: file.variants,
        };
        // every cell's config must parse and validate before any run starts
        for r in &grid.regimes {
            for m in &grid.methods {
                grid.run_config(r, m, grid.lrs[0], 0, Path::new("."))
                    .map_err(|e| {
                        anyhow::anyhow!("regime `{}`, method `{}`: {e}", r.label(), m.name)
                    })?;
            }
        }
        Ok(grid)
    }

    /// The run config of one cell, learning rate and seed, writing into `dir`.
    pub fn run_config(
        &self,
        regime: &Regime,
        method: &StudyMethod,
        lr: f64,
        seed: u64,
        dir: &Path,
    ) -> Result<TrainConfig> {
        let mut t: toml::Table = toml::from_str(&self.base.to_toml()?)?;
        let set = |t: &mut toml::Table, path: &str, v: toml::Value| {
            let mut table = t;
            let keys: Vec<&str> = path.split('.').collect();
            for k in &keys[..keys.len() - 1] {
                table = table
                    .entry(k.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .expect("a config section is a table");
            }
            table.insert(keys[keys.len() - 1].to_string(), v);
        };
        set(&mut t, "run.dir", dir.display().to_string().into());
        set(&mut t, "run.seed", toml::Value::Integer(seed as i64));
        set(&mut t, "run.steps", toml::Value::Integer(self.steps as i64));
        set(&mut t, "optim.lr", lr.into());
        for (key, value) in &regime.settings {
            match key.as_str() {
                "noise" => match value.as_str() {
                    Some("exact") => {
                        if let Some(j) = t.get_mut("judge").and_then(|j| j.as_table_mut()) {
                            j.remove("noise");
                        }
                    }
                    _ => {
                        let mut noise = toml::Table::new();
                        noise.insert("preset".into(), value.clone());
                        set(&mut t, "judge.noise", noise.into());
                    }
                },
                "conflict" => set(&mut t, "data.builtin_task.conflict", as_float(value)),
                "shape" => set(&mut t, "data.builtin_task.shape", value.clone()),
                "scale_rewards" => set(&mut t, "grpo.scale_rewards", value.clone()),
                other => bail!("no such regime key `{other}`"),
            }
        }
        let kind = serde_json::to_value(method.objective)?;
        set(
            &mut t,
            "objective.kind",
            kind.as_str().unwrap_or_default().into(),
        );
        if let Some(sel) = method.selector {
            let sel = serde_json::to_value(sel)?;
            set(
                &mut t,
                "phases.selector",
                sel.as_str().unwrap_or_default().into(),
            );
        }
        if method.alternating() {
            let only = self.grade_active_class_only && !method.has("anchored");
            set(&mut t, "objective.grade_active_class_only", only.into());
        }
        if method.has("guard") {
            set(&mut t, "phases.guard_drop", self.variants.guard_drop.into());
        }
        if method.has("paired") {
            set(&mut t, "phases.paired", true.into());
            if self.variants.paired_samples > 0 {
                let n = self.variants.paired_samples as i64;
                set(&mut t, "phases.select_samples", n.into());
            }
        }
        if method.has("anchored") {
            set(&mut t, "objective.anchor", self.variants.anchor.into());
        }
        let cfg = TrainConfig::from_toml(&toml::to_string(&t)?)?;
        cfg.validate()?;
        Ok(cfg)
    }
}

fn ensure_field(ok: bool, field: &str, why: &str) -> Result<()> {
    if !ok {
        bail!("field `{field}`: {why}");
    }
    Ok(())
}

fn as_float(v: &toml::Value) -> toml::Value {
    match v {
        toml::Value::Integer(i) => toml::Value::Float(*i as f64),
        other => other.clone(),
    }
}

/// Checks one regime value against its key (and the base config it changes).
fn check_setting(key: &str, value: &toml::Value, base: &TrainConfig) -> Result<()> {
    let text = || {
        value
            .as_str()
            .with_context(|| format!("`{value}` is not a string"))
    };
    match key {
        "noise" => {
            let v = text()?;
            if v != "exact" {
                let n = NoiseConfig {
                    preset: Some(v.to_string()),
                    ..NoiseConfig::default()
                };
                n.validate()
                    .map_err(|e| anyhow::anyhow!("`{v}` is neither `exact` nor a preset ({e})"))?;
            }
        }
        "conflict" => {
            let c = as_float(value)
                .as_float()
                .with_context(|| format!("`{value}` is not a number"))?;
            ensure!((0.0..=1.0).contains(&c), "{c} is outside [0, 1]");
        }
        "shape" => {
            serde_json::from_value::<rubric::builtin::Shape>(text()?.into())
                .map_err(|_| anyhow::anyhow!("`{value}`: shapes are builtin, healthbench"))?;
        }
        "scale_rewards" => {
            serde_json::from_value::<ScaleRewards>(text()?.into())
                .map_err(|_| anyhow::anyhow!("`{value}`: choices are group, batch, none"))?;
        }
        _ => unreachable!("keys are checked first"),
    }
    if matches!(key, "conflict" | "shape") && !base.data.builtin {
        bail!("regime `{key}` changes the built-in task, but the base config sets no `data.builtin = true`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(body: &str) -> Result<Grid> {
        let dir = tempfile::tempdir().unwrap();
        let base = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../configs/builtin-categorical.toml"
        );
        let text = format!("[study]\nbase = \"{base}\"\n{body}");
        let path = dir.path().join("grid.toml");
        std::fs::write(&path, text).unwrap();
        Grid::from_file(&path)
    }

    const OK: &str = "methods = [\"scalarized\", \"alternating:lookahead\"]\nseeds = 2\nsteps = 10\nlrs = [0.05]\n";

    #[test]
    fn the_grid_is_the_product_of_its_axes() {
        let g = grid(&format!(
            "{OK}[regimes]\nnoise = [\"exact\", \"healthbench-gpt41\"]\nconflict = [0, 1]\n"
        ))
        .unwrap();
        let labels: Vec<String> = g.regimes.iter().map(Regime::label).collect();
        assert_eq!(
            labels,
            [
                "noise=exact conflict=0",
                "noise=exact conflict=1",
                "noise=healthbench-gpt41 conflict=0",
                "noise=healthbench-gpt41 conflict=1"
            ]
        );
        let cfg = g
            .run_config(&g.regimes[2], &g.methods[1], 0.1, 3, Path::new("/tmp/x"))
            .unwrap();
        assert_eq!(cfg.run.seed, 3);
        assert_eq!(cfg.optim.lr, 0.1);
        assert_eq!(cfg.objective.kind, ObjectiveKind::Alternating);
        assert!(cfg.objective.grade_active_class_only);
        assert_eq!(
            cfg.judge.noise.unwrap().preset.as_deref(),
            Some("healthbench-gpt41")
        );
        assert_eq!(cfg.data.builtin_task.unwrap().conflict, 0.0);
    }

    #[test]
    fn bad_grids_name_the_field() {
        let cases = [
            (
                "methods = [\"scalarized\", \"nope\"]\nseeds = 2\nsteps = 10\nlrs = [0.05]\n",
                "field `study.methods[1]`: unknown objective `nope`",
            ),
            (
                "methods = [\"alternating:lookahead+fast\"]\nseeds = 2\nsteps = 10\nlrs = [0.05]\n",
                "field `study.methods[0]`: unknown variant `+fast`",
            ),
            (
                &format!("{OK}[regimes]\nnoise = []\n"),
                "field `regimes.noise`: empty axis",
            ),
            (
                &format!("{OK}[regimes]\ntemperature = [1.0]\n"),
                "field `regimes.temperature`: no such regime key",
            ),
            (
                &format!("{OK}[regimes]\nnoise = [\"gpt5\"]\n"),
                "field `regimes.noise[0]`: `gpt5` is neither `exact` nor a preset",
            ),
            (
                &format!("{OK}[regimes]\nconflict = [2]\n"),
                "field `regimes.conflict[0]`: 2 is outside [0, 1]",
            ),
            (
                "methods = [\"gdpo\"]\nseeds = 2\nsteps = 10\nlrs = []\n",
                "field `study.lrs`: empty",
            ),
            (
                "methods = [\"gdpo\"]\nseeds = 2\nsteps = 10\n",
                "missing field `lrs`",
            ),
        ];
        for (body, want) in cases {
            let err = grid(body).unwrap_err().to_string();
            assert!(err.contains("grid.toml: "), "{err}");
            assert!(err.contains(want), "{err}\n  wanted: {want}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
}
