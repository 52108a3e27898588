//! Dataset-level checks: count, exact and near duplicates, acceptance.

use loraforge_domain::DatasetRules;

use super::testutil::*;
use super::{InputImage, check_dataset};

fn set(files: &[(&str, Vec<u8>)]) -> Vec<InputImage> {
    files
        .iter()
        .map(|(n, b)| InputImage::new(*n, b.clone()))
        .collect()
}

#[test]
fn three_distinct_good_images_are_accepted() {
    let files = set(&[
        ("a.png", png_bytes(&picture(64, 64, 0))),
        ("b.png", png_bytes(&picture(64, 64, 1))),
        ("c.jpg", jpeg_bytes(&picture(64, 64, 2), 90)),
    ]);
    let r = check_dataset(&files, &small_rules());
    assert!(r.accepted, "{r:?}");
    assert!(r.errors.is_empty() && r.warnings.is_empty(), "{r:?}");
    let names: Vec<_> = r.images.iter().map(|i| i.file_name.as_str()).collect();
    assert_eq!(names, ["a.png", "b.png", "c.jpg"]);
}

#[test]
fn too_few_images() {
    let files = set(&[
        ("a.png", png_bytes(&picture(64, 64, 0))),
        ("b.png", png_bytes(&picture(64, 64, 1))),
    ]);
    let r = check_dataset(&files, &small_rules());
    assert!(!r.accepted);
    assert_eq!(r.errors[0].code, "too_few_images");
    assert_eq!(
        r.errors[0].message,
        "3 images are required, 2 were uploaded; add at least 1 more"
    );

    let r = check_dataset(&files[..1], &small_rules());
    assert_eq!(
        r.errors[0].message,
        "3 images are required, 1 was uploaded; add at least 2 more"
    );
}

#[test]
fn too_many_images() {
    let rules = DatasetRules {
        min_images: 1,
        max_images: 2,
        ..small_rules()
    };
    let files = set(&[
        ("a.png", png_bytes(&picture(64, 64, 0))),
        ("b.png", png_bytes(&picture(64, 64, 1))),
        ("c.png", png_bytes(&picture(64, 64, 2))),
    ]);
    let r = check_dataset(&files, &rules);
    assert!(!r.accepted);
    assert_eq!(r.errors[0].code, "too_many_images");
    assert_eq!(
        r.errors[0].message,
        "at most 2 images are allowed, 3 were uploaded; remove at least 1"
    );
}

#[test]
fn exact_duplicate_is_an_error_on_the_later_file() {
    let a = png_bytes(&picture(64, 64, 0));
    let files = set(&[
        ("a.jpg", a.clone()),
        ("x.png", png_bytes(&picture(64, 64, 1))),
        ("b.jpg", a),
    ]);
    let r = check_dataset(&files, &small_rules());
    assert!(!r.accepted);
    assert!(r.images[0].ok() && r.images[1].ok());
    assert_eq!(r.images[2].errors[0].code, "exact_duplicate");
    assert_eq!(
        r.images[2].errors[0].message,
        "b.jpg is the same file as a.jpg; remove one of them"
    );
    assert!(
        r.warnings.is_empty(),
        "exact duplicates are not also near duplicates: {:?}",
        r.warnings
    );
}

#[test]
fn near_duplicate_is_a_warning_naming_both() {
    let base = picture(200, 150, 1);
    let mut brighter = base.clone();
    for p in brighter.pixels_mut() {
        p.0 = p.0.map(|c| c.saturating_add(6));
    }
    let files = set(&[
        ("beach.png", png_bytes(&base)),
        ("other.png", png_bytes(&picture(200, 150, 2))),
        ("beach-edit.jpg", jpeg_bytes(&brighter, 70)),
    ]);
    let r = check_dataset(&files, &small_rules());
    assert!(r.accepted, "near duplicates only warn: {r:?}");
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert_eq!(r.warnings[0].code, "near_duplicate");
    assert!(
        r.warnings[0]
            .message
            .starts_with("beach-edit.jpg looks almost the same as beach.png;")
    );
}

#[test]
fn noisy_photos_are_not_near_duplicates() {
    let files: Vec<_> = (0..6)
        .map(|i| InputImage::new(format!("{i}.png"), png_bytes(&noise(64, 64, i))))
        .collect();
    let r = check_dataset(&files, &small_rules());
    assert!(r.accepted && r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn one_bad_image_rejects_the_set() {
    let files = set(&[
        ("a.png", png_bytes(&picture(64, 64, 0))),
        ("b.png", png_bytes(&picture(64, 64, 1))),
        ("notes.png", b"not an image".to_vec()),
    ]);
    let r = check_dataset(&files, &small_rules());
    assert!(!r.accepted);
    assert!(r.errors.is_empty());
    assert_eq!(r.images[2].errors[0].code, "unsupported_format");
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["accepted"], false);
}
