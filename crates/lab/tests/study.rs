//! The shipped study grids (`arlrr study --grid`) parse, with every run config they make.

#[test]
fn every_shipped_study_grid_parses_with_its_run_configs() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let table: toml::Table = toml::from_str(&text).unwrap();
            if table.contains_key("study") {
                lab::study::Grid::from_file(&path).unwrap_or_else(|e| panic!("{e:#}"));
                n += 1;
            }
        }
    }
    assert!(n >= 1, "{n} study grids");
}
