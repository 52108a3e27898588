//! A tiny safetensors writer for tests, and LoRA layouts in each naming convention.

use serde_json::{Map, Value, json};

#[derive(Default, Clone)]
pub struct Writer {
    tensors: Vec<(String, String, Vec<u64>, Vec<u8>)>,
    metadata: Map<String, Value>,
    /// Pad the header with spaces to a multiple of 8 (as `safetensors` does); off gives
    /// misaligned data.
    pub align: bool,
}

impl Writer {
    pub fn new() -> Self {
        Self {
            align: true,
            ..Self::default()
        }
    }

    pub fn meta(mut self, k: &str, v: &str) -> Self {
        self.metadata
            .insert(k.to_owned(), Value::String(v.to_owned()));
        self
    }

    pub fn raw(mut self, name: &str, dtype: &str, shape: &[u64], data: Vec<u8>) -> Self {
        self.tensors
            .push((name.to_owned(), dtype.to_owned(), shape.to_vec(), data));
        self
    }

    /// F16 tensor of small finite values.
    pub fn f16(self, name: &str, shape: &[u64]) -> Self {
        let n: u64 = shape.iter().product();
        let data = (0..n)
            .flat_map(|i| (0x2000u16 + (i % 0x800) as u16).to_le_bytes())
            .collect();
        self.raw(name, "F16", shape, data)
    }

    pub fn scalar_f16(self, name: &str, bits: u16) -> Self {
        self.raw(name, "F16", &[], bits.to_le_bytes().to_vec())
    }

    pub fn scalar_f32(self, name: &str, v: f32) -> Self {
        self.raw(name, "F32", &[], v.to_le_bytes().to_vec())
    }

    /// Overwrites element `i` (2-byte dtypes) of the tensor called `name`.
    pub fn poke16(mut self, name: &str, i: usize, bits: u16) -> Self {
        let t = self
            .tensors
            .iter_mut()
            .find(|t| t.0 == name)
            .expect("tensor");
        t.3[2 * i..2 * i + 2].copy_from_slice(&bits.to_le_bytes());
        self
    }

    pub fn header_json(&self) -> Value {
        let mut obj = Map::new();
        if !self.metadata.is_empty() {
            obj.insert(
                "__metadata__".to_owned(),
                Value::Object(self.metadata.clone()),
            );
        }
        let mut offset = 0u64;
        for (name, dtype, shape, data) in &self.tensors {
            let end = offset + data.len() as u64;
            obj.insert(
                name.clone(),
                json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, end]}),
            );
            offset = end;
        }
        Value::Object(obj)
    }

    pub fn build(&self) -> Vec<u8> {
        let mut header = serde_json::to_vec(&self.header_json()).unwrap();
        if self.align {
            while !header.len().is_multiple_of(8) {
                header.push(b' ');
            }
        } else if header.len().is_multiple_of(2) {
            header.push(b' '); // odd length: every 2-byte element is misaligned
        }
        let data: Vec<u8> = self
            .tensors
            .iter()
            .flat_map(|t| t.3.iter().copied())
            .collect();
        file(&header, &data)
    }
}

/// A safetensors file from a header (as given) and a data area.
pub fn file(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// Rules without a size window, scanning values.
pub fn rules() -> super::LoraRules {
    super::LoraRules {
        min_bytes: 0,
        max_bytes: u64::MAX,
        scan_values: true,
    }
}

/// kohya: `lora_unet_…` modules with f16 `alpha` (bits) when given.
pub fn kohya(modules: usize, rank: u64, alpha_bits: Option<u16>) -> Writer {
    let mut w = Writer::new()
        .meta("ss_network_module", "networks.lora")
        .meta("ss_base_model_version", "sdxl_base_v1-0");
    for i in 0..modules {
        let m = format!("lora_unet_down_blocks_0_attentions_0_transformer_blocks_{i}_attn1_to_q");
        w = w
            .f16(&format!("{m}.lora_down.weight"), &[rank, 32])
            .f16(&format!("{m}.lora_up.weight"), &[48, rank]);
        if let Some(bits) = alpha_bits {
            w = w.scalar_f16(&format!("{m}.alpha"), bits);
        }
    }
    w.f16(
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
        &[rank, 16],
    )
    .f16(
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
        &[24, rank],
    )
    .scalar_f16(
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha",
        alpha_bits.unwrap_or(0x4800),
    )
}

/// PEFT: `base_model.model.….lora_A.weight` / `lora_B`.
pub fn peft(modules: usize, rank: u64) -> Writer {
    let mut w = Writer::new().meta("format", "pt");
    for i in 0..modules {
        let m = format!(
            "base_model.model.down_blocks.1.attentions.{i}.transformer_blocks.0.attn2.to_k"
        );
        w = w
            .f16(&format!("{m}.lora_A.weight"), &[rank, 40])
            .f16(&format!("{m}.lora_B.weight"), &[40, rank]);
    }
    w
}

/// Older diffusers: `unet.….lora.down.weight` / `.lora.up.weight`.
pub fn diffusers_old(modules: usize, rank: u64) -> Writer {
    let mut w = Writer::new();
    for i in 0..modules {
        let m = format!("unet.up_blocks.{i}.attentions.0.transformer_blocks.0.attn1.to_out.0");
        w = w
            .f16(&format!("{m}.lora.down.weight"), &[rank, 20])
            .f16(&format!("{m}.lora.up.weight"), &[20, rank]);
    }
    w
}

/// Newer diffusers: PEFT names under `unet.`, alpha in `lora_adapter_metadata`.
pub fn diffusers_new(modules: usize, rank: u64, alpha: u32) -> Writer {
    let adapter =
        json!({"unet.lora_alpha": alpha, "unet.r": rank, "unet.target_modules": ["to_q"]});
    let mut w = Writer::new().meta("lora_adapter_metadata", &adapter.to_string());
    for i in 0..modules {
        let m = format!("unet.mid_block.attentions.0.transformer_blocks.{i}.attn1.to_q");
        w = w
            .f16(&format!("{m}.lora_A.weight"), &[rank, 20])
            .f16(&format!("{m}.lora_B.weight"), &[20, rank]);
    }
    w
}
