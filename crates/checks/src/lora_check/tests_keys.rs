//! Naming conventions, pairing, ranks, alpha and hints.

use super::keys::{LoraFormat, Role, classify};
use super::testutil::*;
use super::{AlphaSource, LoraError, inspect_lora};

#[test]
fn kohya_file() {
    let r = inspect_lora(&kohya(3, 8, Some(0x4800)).build(), &rules()).unwrap(); // alpha 8.0
    assert_eq!(r.format, LoraFormat::Kohya);
    assert_eq!((r.modules, r.rank, r.other_tensors), (4, 8, 0));
    assert_eq!((r.alpha, r.alpha_source), (Some(8.0), AlphaSource::Tensors));
    assert_eq!(r.dtypes.get("F16"), Some(&12));
    assert_eq!(r.base_model_hint.as_deref(), Some("sdxl_base_v1-0"));
    assert_eq!(r.trainer_hint.as_deref(), Some("networks.lora"));
    assert_eq!(
        r.hints.get("ss_network_module").map(String::as_str),
        Some("networks.lora")
    );
    let params = 3 * (8 * 32 + 48 * 8) + (8 * 16 + 24 * 8) + 4;
    assert_eq!(r.parameters, params);
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["format"], "kohya");
    assert_eq!(v["alpha_source"], "tensors");
}

#[test]
fn peft_file() {
    let bytes = peft(4, 16)
        .meta(
            "loraforge.base_model",
            "stabilityai/stable-diffusion-xl-base-1.0",
        )
        .build();
    let r = inspect_lora(&bytes, &rules()).unwrap();
    assert_eq!((r.format, r.modules, r.rank), (LoraFormat::Peft, 4, 16));
    assert_eq!((r.alpha, r.alpha_source), (None, AlphaSource::Unknown));
    assert_eq!(
        r.base_model_hint.as_deref(),
        Some("stabilityai/stable-diffusion-xl-base-1.0")
    );
    assert_eq!(r.metadata.get("format").map(String::as_str), Some("pt"));
    assert_eq!(r.total_bytes, bytes.len() as u64);
}

#[test]
fn diffusers_files_old_and_new() {
    let r = inspect_lora(&diffusers_old(3, 4).build(), &rules()).unwrap();
    assert_eq!((r.format, r.modules, r.rank), (LoraFormat::Diffusers, 3, 4));
    let r = inspect_lora(&diffusers_new(2, 8, 16).build(), &rules()).unwrap();
    assert_eq!((r.format, r.modules, r.rank), (LoraFormat::Diffusers, 2, 8));
    assert_eq!(
        (r.alpha, r.alpha_source),
        (Some(16.0), AlphaSource::AdapterMetadata)
    );
}

#[test]
fn conv_modules_are_4d() {
    let w = Writer::new()
        .f16("lora_unet_conv_in.lora_down.weight", &[4, 3, 3, 3])
        .f16("lora_unet_conv_in.lora_up.weight", &[8, 4, 1, 1])
        .raw(
            "lora_unet_conv_in.alpha",
            "BF16",
            &[],
            0x4080u16.to_le_bytes().to_vec(),
        ); // 4.0
    let r = inspect_lora(&w.build(), &rules()).unwrap();
    assert_eq!((r.rank, r.alpha), (4, Some(4.0)));
}

#[test]
fn no_lora_tensors() {
    let w = Writer::new().f16("model.diffusion_model.input_blocks.0.0.weight", &[4, 4]);
    assert_eq!(
        inspect_lora(&w.build(), &rules()).unwrap_err(),
        LoraError::NoLoraTensors { tensors: 1 }
    );
}

#[test]
fn unpaired_down_or_up() {
    let w = peft(2, 4).f16("base_model.model.extra.to_v.lora_A.weight", &[4, 8]);
    let e = inspect_lora(&w.build(), &rules()).unwrap_err();
    assert_eq!(
        e,
        LoraError::Unpaired {
            count: 1,
            examples: vec!["base_model.model.extra.to_v".into()]
        }
    );
    assert_eq!(
        e.to_string(),
        "1 modules lack their down or up weight, e.g. base_model.model.extra.to_v"
    );
}

#[test]
fn mismatched_shapes() {
    for (down, up) in [
        (&[4u64, 64][..], &[64u64, 8][..]),
        (&[4, 8, 8][..], &[8, 4, 8][..]),
        (&[4, 8][..], &[8, 4, 1, 1][..]),
        (&[0, 8][..], &[8, 0][..]),
    ] {
        let w = Writer::new()
            .f16("m.lora_A.weight", down)
            .f16("m.lora_B.weight", up);
        let e = inspect_lora(&w.build(), &rules()).unwrap_err();
        assert_eq!(e.code(), "mismatched_shapes", "{down:?} {up:?}");
    }
}

#[test]
fn inconsistent_ranks_report_the_set() {
    let w = peft(2, 4)
        .f16("base_model.model.b.lora_A.weight", &[8, 40])
        .f16("base_model.model.b.lora_B.weight", &[40, 8]);
    let e = inspect_lora(&w.build(), &rules()).unwrap_err();
    assert_eq!(e, LoraError::InconsistentRanks { ranks: vec![4, 8] });
    assert_eq!(
        e.to_string(),
        "modules use different ranks [4, 8]; one LoRA must use one rank"
    );
}

#[test]
fn alpha_mixed_and_bad() {
    let w = kohya(1, 4, Some(0x4400)) // alpha 4.0
        .f16("lora_unet_b.lora_down.weight", &[4, 8])
        .f16("lora_unet_b.lora_up.weight", &[8, 4])
        .scalar_f32("lora_unet_b.alpha", 2.0);
    let r = inspect_lora(&w.build(), &rules()).unwrap();
    assert_eq!(
        (r.alpha, r.alpha_source, r.alphas.clone()),
        (None, AlphaSource::Mixed, vec![2.0, 4.0])
    );

    let w = Writer::new()
        .f16("lora_unet_a.lora_down.weight", &[2, 4])
        .f16("lora_unet_a.lora_up.weight", &[4, 2])
        .f16("lora_unet_a.alpha", &[2]);
    assert_eq!(
        inspect_lora(&w.build(), &rules()).unwrap_err(),
        LoraError::BadAlpha {
            module: "lora_unet_a".into()
        }
    );
}

#[test]
fn other_tensors_are_counted_not_refused() {
    let w = peft(1, 4).f16("base_model.model.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_magnitude_vector", &[40]);
    let r = inspect_lora(&w.build(), &rules()).unwrap();
    assert_eq!(r.other_tensors, 1);
}

#[test]
fn names_are_classified() {
    let k =
        classify("lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight").unwrap();
    assert_eq!(
        (k.0, k.1, k.2),
        (
            Some(LoraFormat::Kohya),
            "lora_te2_text_model_encoder_layers_0_self_attn_q_proj",
            Role::Up
        )
    );
    let d = classify("unet.down_blocks.0.attentions.0.processor.to_q_lora.down.weight").unwrap();
    assert_eq!(
        (d.0, d.1, d.2),
        (
            Some(LoraFormat::Diffusers),
            "unet.down_blocks.0.attentions.0.processor.to_q",
            Role::Down
        )
    );
    let t = classify("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight")
        .unwrap();
    assert_eq!(t.0, Some(LoraFormat::Diffusers));
    let p = classify("base_model.model.q_proj.lora_B.weight").unwrap();
    assert_eq!((p.0, p.2), (Some(LoraFormat::Peft), Role::Up));
    assert_eq!(
        classify("lora_unet_x.alpha").map(|c| c.2),
        Some(Role::Alpha)
    );
    assert!(classify("lora.down.weight").is_none());
    assert!(classify("model.weight").is_none());
}
