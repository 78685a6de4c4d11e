//! Configuration files parse to exactly the documented settings; mistakes are errors.

use msclam_trainer::config::TrainConfig;

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{}/configs/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn the_reference_configs_parse_to_the_papers_settings() {
    let ms = TrainConfig::from_toml(&read("ms-clam-camelyon16.toml")).unwrap();
    assert_eq!(
        ms,
        TrainConfig::default(),
        "the defaults are the reference run"
    );
    assert_eq!(
        (
            ms.lr,
            ms.beta2,
            ms.b_plus,
            ms.b_minus,
            ms.ew_weight,
            ms.ew_gamma
        ),
        (2e-4, 0.99, 1024, 8, 90.0, 0.9)
    );
    let clam = TrainConfig::from_toml(&read("clam-sb-baseline.toml")).unwrap();
    assert_eq!(clam, TrainConfig::clam_sb());
}

#[test]
fn unknown_keys_and_bad_values_are_errors() {
    let err = TrainConfig::from_toml("learning_rate = 0.1").unwrap_err();
    assert!(err.to_string().contains("learning_rate"), "{err}");
    let err = TrainConfig::from_toml("sampler = \"sometimes\"").unwrap_err();
    assert!(
        err.to_string().contains("sampler") || err.to_string().contains("sometimes"),
        "{err}"
    );
    let bad = TrainConfig {
        bag_weight: 1.5,
        ..TrainConfig::default()
    };
    assert!(bad.validate().is_err());
    let bad = TrainConfig {
        epochs: 0,
        ..TrainConfig::default()
    };
    assert!(bad.validate().is_err());
}
