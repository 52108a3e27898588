//! Tests of the SDXL UNet LoRA converter: every key form ai-toolkit and sd-scripts write, and
//! hostile files.

use super::super::header::parse_header;
use super::super::testutil::Writer;
use super::super::{LoraFormat, LoraRules, inspect_lora};
use super::*;
use serde_json::Value;

#[test]
fn sgm_names_map_back_to_diffusers() {
    let l = UnetLayout::SDXL;
    let cases = [
        (
            "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        ),
        (
            "input_blocks.5.1.proj_in",
            "down_blocks.1.attentions.1.proj_in",
        ),
        (
            "input_blocks.1.0.in_layers.2",
            "down_blocks.0.resnets.0.conv1",
        ),
        (
            "input_blocks.2.0.emb_layers.1",
            "down_blocks.0.resnets.1.time_emb_proj",
        ),
        (
            "input_blocks.4.0.skip_connection",
            "down_blocks.1.resnets.0.conv_shortcut",
        ),
        ("input_blocks.3.0.op", "down_blocks.0.downsamplers.0.conv"),
        ("input_blocks.6.0.op", "down_blocks.1.downsamplers.0.conv"),
        (
            "middle_block.1.transformer_blocks.9.ff.net.2",
            "mid_block.attentions.0.transformer_blocks.9.ff.net.2",
        ),
        ("middle_block.2.out_layers.3", "mid_block.resnets.1.conv2"),
        ("output_blocks.2.2.conv", "up_blocks.0.upsamplers.0.conv"),
        ("output_blocks.8.1.conv", "up_blocks.2.upsamplers.0.conv"),
        (
            "output_blocks.4.1.transformer_blocks.0.attn2.to_out.0",
            "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_out.0",
        ),
        (
            "output_blocks.7.0.out_layers.3",
            "up_blocks.2.resnets.1.conv2",
        ),
        ("time_embed.0", "time_embedding.linear_1"),
    ];
    for (sgm, want) in cases {
        assert_eq!(
            diffusers_module_name(sgm, l).as_deref(),
            Some(want),
            "{sgm}"
        );
    }
    for bad in [
        "input_blocks.3.0.in_layers.2",
        "output_blocks.1.3.x",
        "nowhere.1.1",
        "input_blocks.x.1.proj_in",
        "middle_block.5.x",
    ] {
        assert_eq!(diffusers_module_name(bad, l), None, "{bad}");
    }
}

#[test]
fn underscored_names_are_split_at_known_words() {
    assert_eq!(
        dotted("output_blocks_4_1_transformer_blocks_0_attn2_to_out_0"),
        "output_blocks.4.1.transformer_blocks.0.attn2.to_out.0"
    );
    assert_eq!(
        dotted("input_blocks_1_0_in_layers_2"),
        "input_blocks.1.0.in_layers.2"
    );
    assert_eq!(
        dotted("middle_block_1_transformer_blocks_0_ff_net_0_proj"),
        "middle_block.1.transformer_blocks.0.ff.net.0.proj"
    );
}

fn kohya_file() -> Vec<u8> {
    Writer::new()
        .meta("format", "pt")
        .meta("loraforge.base_model", "/m")
        .f16(
            "lora_unet_input_blocks_4_1_proj_in.lora_down.weight",
            &[4, 8],
        )
        .f16("lora_unet_input_blocks_4_1_proj_in.lora_up.weight", &[8, 4])
        .scalar_f32("lora_unet_input_blocks_4_1_proj_in.alpha", 8.0)
        .f16(
            "lora_unet_output_blocks_2_2_conv.lora_down.weight",
            &[4, 8, 3, 3],
        )
        .f16(
            "lora_unet_output_blocks_2_2_conv.lora_up.weight",
            &[8, 4, 1, 1],
        )
        .scalar_f32("lora_unet_output_blocks_2_2_conv.alpha", 8.0)
        .build()
}

#[test]
fn converts_into_a_diffusers_file_the_check_accepts() {
    let src = kohya_file();
    let out = kohya_to_diffusers(&src, UnetLayout::SDXL).unwrap();
    let report = inspect_lora(
        &out,
        &LoraRules {
            min_bytes: 0,
            ..LoraRules::default()
        },
    )
    .unwrap();
    assert_eq!(report.format, LoraFormat::Diffusers);
    assert_eq!(report.rank, 4);
    assert_eq!(report.alpha, Some(8.0));
    assert_eq!(report.modules, 2);
    let h = parse_header(&out).unwrap();
    let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"unet.down_blocks.1.attentions.0.proj_in.lora_A.weight"));
    assert!(names.contains(&"unet.up_blocks.0.upsamplers.0.conv.lora_B.weight"));
    assert_eq!(
        h.metadata.get("loraforge.base_model").map(String::as_str),
        Some("/m")
    );
    assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
    // The bytes are the source's.
    let src_h = parse_header(&src).unwrap();
    let a = src_h
        .tensors
        .iter()
        .find(|t| t.name == "lora_unet_input_blocks_4_1_proj_in.lora_down.weight")
        .unwrap();
    let b = h
        .tensors
        .iter()
        .find(|t| t.name == "unet.down_blocks.1.attentions.0.proj_in.lora_A.weight")
        .unwrap();
    assert_eq!(src_h.data(&src, a), h.data(&out, b));
    assert_eq!(b.shape, vec![4, 8]);
}

#[test]
fn hostile_inputs_are_refused_with_the_reason() {
    let l = UnetLayout::SDXL;
    assert!(matches!(
        kohya_to_diffusers(b"garbage", l),
        Err(ConvertError::File(_))
    ));
    let mut truncated = kohya_file();
    truncated.truncate(truncated.len() - 3);
    assert!(matches!(
        kohya_to_diffusers(&truncated, l),
        Err(ConvertError::File(_))
    ));
    let unknown = Writer::new().f16("model.weight", &[2, 2]).build();
    assert_eq!(
        kohya_to_diffusers(&unknown, l),
        Err(ConvertError::UnknownKey("model.weight".into()))
    );
    let te = Writer::new()
        .f16(
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
            &[4, 8],
        )
        .f16(
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
            &[8, 4],
        )
        .build();
    assert!(matches!(
        kohya_to_diffusers(&te, l),
        Err(ConvertError::TextEncoder(_))
    ));
    let nowhere = Writer::new()
        .f16("lora_unet_nowhere_1_1_x.lora_down.weight", &[4, 8])
        .f16("lora_unet_nowhere_1_1_x.lora_up.weight", &[8, 4])
        .build();
    assert!(matches!(
        kohya_to_diffusers(&nowhere, l),
        Err(ConvertError::UnknownModule(_))
    ));
    let unpaired = Writer::new()
        .f16(
            "lora_unet_input_blocks_4_1_proj_in.lora_down.weight",
            &[4, 8],
        )
        .build();
    assert!(matches!(
        kohya_to_diffusers(&unpaired, l),
        Err(ConvertError::Unpaired(_))
    ));
    let mixed = Writer::new()
        .f16(
            "lora_unet_input_blocks_4_1_proj_in.lora_down.weight",
            &[4, 8],
        )
        .f16("lora_unet_input_blocks_4_1_proj_in.lora_up.weight", &[8, 4])
        .scalar_f32("lora_unet_input_blocks_4_1_proj_in.alpha", 8.0)
        .f16(
            "lora_unet_input_blocks_4_1_proj_out.lora_down.weight",
            &[4, 8],
        )
        .f16(
            "lora_unet_input_blocks_4_1_proj_out.lora_up.weight",
            &[8, 4],
        )
        .scalar_f32("lora_unet_input_blocks_4_1_proj_out.alpha", 4.0)
        .build();
    assert!(matches!(
        kohya_to_diffusers(&mixed, l),
        Err(ConvertError::MixedAlphas(_))
    ));
    let nan_alpha = Writer::new()
        .f16(
            "lora_unet_input_blocks_4_1_proj_in.lora_down.weight",
            &[4, 8],
        )
        .f16("lora_unet_input_blocks_4_1_proj_in.lora_up.weight", &[8, 4])
        .scalar_f32("lora_unet_input_blocks_4_1_proj_in.alpha", f32::NAN)
        .build();
    assert!(matches!(
        kohya_to_diffusers(&nan_alpha, l),
        Err(ConvertError::BadAlpha { .. })
    ));
    let empty = Writer::new().build();
    assert!(kohya_to_diffusers(&empty, l).is_err());
}

/// (sgm name, ai-toolkit flat diffusers name, diffusers module) of one module per kind.
const MODULES: &[(&str, &str, &str)] = &[
    (
        "input_blocks_4_1_transformer_blocks_0_attn1_to_k",
        "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_k",
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k",
    ),
    (
        "middle_block_1_transformer_blocks_1_ff_net_0_proj",
        "mid_block_attentions_0_transformer_blocks_1_ff_net_0_proj",
        "mid_block.attentions.0.transformer_blocks.1.ff.net.0.proj",
    ),
    (
        "output_blocks_5_1_transformer_blocks_0_attn2_to_out_0",
        "up_blocks_1_attentions_2_transformer_blocks_0_attn2_to_out_0",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_out.0",
    ),
    (
        "input_blocks_1_0_emb_layers_1",
        "down_blocks_0_resnets_0_time_emb_proj",
        "down_blocks.0.resnets.0.time_emb_proj",
    ),
    (
        "output_blocks_2_2_conv",
        "up_blocks_0_upsamplers_0_conv",
        "up_blocks.0.upsamplers.0.conv",
    ),
    (
        "time_embed_0",
        "time_embedding_linear_1",
        "time_embedding.linear_1",
    ),
];

const RANK: u64 = 4;

/// Distinct F16 bytes per tensor, so a swapped tensor shows.
fn data(seed: usize, n: u64) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (0x1000u16 + (seed as u16) * 64 + (i % 64) as u16).to_le_bytes())
        .collect()
}

#[derive(Clone, Copy)]
enum Form {
    Sgm,
    Flat,
    Peft,
}

/// A LoRA of `MODULES` in `form`, with alpha tensors equal to the rank unless PEFT.
fn lora(form: Form) -> Writer {
    let mut w = Writer::new().meta("software", "ai-toolkit");
    for (i, (sgm, flat, dotted_name)) in MODULES.iter().enumerate() {
        let (down, up, alpha) = match form {
            Form::Sgm | Form::Flat => {
                let m = match form {
                    Form::Sgm => sgm,
                    _ => flat,
                };
                (
                    format!("lora_unet_{m}.lora_down.weight"),
                    format!("lora_unet_{m}.lora_up.weight"),
                    Some(format!("lora_unet_{m}.alpha")),
                )
            }
            Form::Peft => (
                format!("unet.{dotted_name}.lora_A.weight"),
                format!("unet.{dotted_name}.lora_B.weight"),
                None,
            ),
        };
        w = w.raw(&down, "F16", &[RANK, 8], data(2 * i, RANK * 8)).raw(
            &up,
            "F16",
            &[8, RANK],
            data(2 * i + 1, 8 * RANK),
        );
        if let Some(a) = alpha {
            w = w.scalar_f32(&a, RANK as f32);
        }
    }
    w
}

/// What our trainer writes for `MODULES`: `unet.<module>.lora_A.weight` / `.lora_B.weight`.
fn trainer_form() -> Vec<u8> {
    lora(Form::Peft).build()
}

/// Asserts `got` holds exactly `want`'s tensors: names, dtypes, shapes and bytes.
fn assert_same_tensors(got: &[u8], want: &[u8]) {
    let (g, w) = (parse_header(got).unwrap(), parse_header(want).unwrap());
    let mut got_names: Vec<&str> = g.tensors.iter().map(|t| t.name.as_str()).collect();
    let mut want_names: Vec<&str> = w.tensors.iter().map(|t| t.name.as_str()).collect();
    got_names.sort_unstable();
    want_names.sort_unstable();
    assert_eq!(got_names, want_names);
    for wt in &w.tensors {
        let gt = g.tensors.iter().find(|t| t.name == wt.name).unwrap();
        assert_eq!((gt.dtype, &gt.shape), (wt.dtype, &wt.shape), "{}", wt.name);
        assert_eq!(g.data(got, gt), w.data(want, wt), "{}", wt.name);
    }
}

fn adapter_metadata(file: &[u8]) -> Value {
    let h = parse_header(file).unwrap();
    serde_json::from_str(&h.metadata["lora_adapter_metadata"]).unwrap()
}

#[test]
fn every_ai_toolkit_sdxl_form_converts_to_the_trainer_form() {
    let want = trainer_form();
    let mut metadata = Vec::new();
    for form in [Form::Sgm, Form::Flat, Form::Peft] {
        let out = kohya_to_diffusers(&lora(form).build(), UnetLayout::SDXL).unwrap();
        assert_same_tensors(&out, &want);
        let meta = adapter_metadata(&out);
        assert_eq!(meta["unet.r"], RANK);
        assert_eq!(meta["unet.lora_alpha"], RANK as f64);
        assert_eq!(meta["unet.target_modules"].as_array().unwrap().len(), 6);
        metadata.push(meta);
        let report = inspect_lora(
            &out,
            &LoraRules {
                min_bytes: 0,
                ..LoraRules::default()
            },
        )
        .unwrap();
        assert_eq!(report.format, LoraFormat::Diffusers);
        assert_eq!(report.modules, MODULES.len());
    }
    assert!(metadata.windows(2).all(|m| m[0] == m[1]));
}

#[test]
fn all_zero_text_encoder_modules_are_dropped_with_a_note() {
    let zeros = |n: u64| vec![0u8; 2 * n as usize];
    let negative_zeros = |n: u64| (0..n).flat_map(|_| 0x8000u16.to_le_bytes()).collect();
    let src = lora(Form::Flat)
        .f16(
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
            &[4, 8],
        )
        .raw(
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
            "F16",
            &[8, 4],
            zeros(32),
        )
        .scalar_f32("lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha", 4.0)
        .raw(
            "lora_te2.text_model.encoder.layers.1.self_attn.q_proj.lora_A.weight",
            "F16",
            &[4, 8],
            negative_zeros(32),
        )
        .f16(
            "lora_te2.text_model.encoder.layers.1.self_attn.q_proj.lora_B.weight",
            &[8, 4],
        )
        .build();
    let out = kohya_to_diffusers(&src, UnetLayout::SDXL).unwrap();
    assert_same_tensors(&out, &trainer_form());
    let h = parse_header(&out).unwrap();
    assert_eq!(h.metadata["loraforge.dropped_text_encoder_modules"], "2");
}

#[test]
fn trained_text_encoder_modules_are_refused() {
    for (down, up) in [
        (
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
            "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
        ),
        (
            "lora_te1.text_model.encoder.layers.0.mlp.fc1.lora_A.weight",
            "lora_te1.text_model.encoder.layers.0.mlp.fc1.lora_B.weight",
        ),
        (
            "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_A.weight",
            "text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_B.weight",
        ),
    ] {
        let src = lora(Form::Flat).f16(down, &[4, 8]).f16(up, &[8, 4]).build();
        assert_eq!(
            kohya_to_diffusers(&src, UnetLayout::SDXL),
            Err(ConvertError::TextEncoder(down.to_owned()))
        );
    }
    let half = lora(Form::Flat)
        .raw(
            "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
            "F16",
            &[4, 8],
            vec![0; 64],
        )
        .build();
    assert!(matches!(
        kohya_to_diffusers(&half, UnetLayout::SDXL),
        Err(ConvertError::Unpaired(_))
    ));
}

#[test]
fn hostile_names_in_the_new_forms_are_refused_with_the_reason() {
    let l = UnetLayout::SDXL;
    let pair = |m: &str| {
        Writer::new()
            .f16(&format!("{m}.lora_down.weight"), &[4, 8])
            .f16(&format!("{m}.lora_up.weight"), &[8, 4])
    };
    // The same module under its sgm and its flat name.
    let twice = pair("lora_unet_input_blocks_4_1_proj_in")
        .f16(
            "lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight",
            &[4, 8],
        )
        .f16(
            "lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight",
            &[8, 4],
        )
        .build();
    assert!(matches!(
        kohya_to_diffusers(&twice, l),
        Err(ConvertError::DuplicateModule(_, _, m)) if m == "down_blocks.1.attentions.0.proj_in"
    ));
    let leading_zero = pair("lora_unet_input_blocks_4_1_proj_in")
        .f16(
            "lora_unet_input_blocks_04_1_proj_in.lora_down.weight",
            &[4, 8],
        )
        .build();
    assert!(matches!(
        kohya_to_diffusers(&leading_zero, l),
        Err(ConvertError::UnknownModule(_))
    ));
    for module in [
        "lora_unet_down_blocks_1_attentions_0_proj_in_",
        "lora_unet_down_blocks_1_attentions_0_bogus",
        "lora_unet_down_blocks_1_attentions_5_proj_in",
        "lora_unet_input_blocks_4_1_bogus",
        "lora_unet_",
        "unet.down_blocks.1.attentions.0.bogus",
        "unet.input_blocks.4.1.proj_in",
    ] {
        assert_eq!(
            kohya_to_diffusers(&pair(module).build(), l),
            Err(ConvertError::UnknownModule(module.to_owned())),
            "{module}"
        );
    }
    let long = format!("lora_unet_{}", "to_out_0_".repeat(2000));
    assert!(matches!(
        kohya_to_diffusers(&pair(&long).build(), l),
        Err(ConvertError::UnknownModule(_))
    ));
    let unpaired_peft = Writer::new()
        .f16(
            "unet.down_blocks.1.attentions.0.proj_in.lora_A.weight",
            &[4, 8],
        )
        .build();
    assert_eq!(
        kohya_to_diffusers(&unpaired_peft, l),
        Err(ConvertError::Unpaired(
            "unet.down_blocks.1.attentions.0.proj_in".into()
        ))
    );
    let other_model = pair("transformer.single_transformer_blocks.0.attn.to_q").build();
    assert!(matches!(
        kohya_to_diffusers(&other_model, l),
        Err(ConvertError::UnknownKey(_))
    ));
    let only_text_encoder = Writer::new()
        .raw("lora_te1_x.lora_down.weight", "F16", &[4, 8], vec![0; 64])
        .raw("lora_te1_x.lora_up.weight", "F16", &[8, 4], vec![0; 64])
        .build();
    assert_eq!(
        kohya_to_diffusers(&only_text_encoder, l),
        Err(ConvertError::Empty)
    );
}

#[test]
fn zero_means_every_element_zero_in_each_dtype() {
    use super::super::dtype::Dtype;
    use super::super::scan::all_zero;
    assert!(all_zero(Dtype::F16, &[0, 0x80, 0, 0]));
    assert!(!all_zero(Dtype::F16, &[0, 0x80, 1, 0]));
    assert!(all_zero(Dtype::F32, &(-0.0f32).to_le_bytes()));
    assert!(!all_zero(Dtype::F32, &1e-30f32.to_le_bytes()));
    assert!(all_zero(Dtype::F64, &(-0.0f64).to_le_bytes()));
    assert!(!all_zero(Dtype::Bf16, &[1, 0]));
    assert!(all_zero(Dtype::F8E4M3, &[0x80, 0]));
    assert!(!all_zero(Dtype::F8E8M0, &[0]));
    assert!(!all_zero(Dtype::I8, &[0x80]));
}

/// Every Linear/Conv2d layer of the real SDXL UNet (the layers ai-toolkit puts a LoRA on) comes
/// back to its diffusers name from each key form: sgm-kohya, ai-toolkit's flat diffusers path
/// and PEFT.
#[test]
fn every_real_sdxl_unet_layer_maps_back_from_each_form() {
    let l = UnetLayout::SDXL;
    let table = include_str!("sdxl_unet_modules.tsv");
    let mut n = 0;
    for line in table.lines().filter(|l| !l.starts_with('#')) {
        let (name, sgm) = line.split_once('\t').unwrap();
        let want = Ok(name.to_owned());
        for module in [
            format!("lora_unet_{}", sgm.replace('.', "_")),
            format!("lora_unet_{}", name.replace('.', "_")),
            format!("unet.{name}"),
        ] {
            assert_eq!(unet_module(&module, "t", l), want, "{module}");
        }
        n += 1;
    }
    assert_eq!(n, 794);
}
