//! The diffusers SDXL UNet module names a LoRA may target, as a grammar (`is_unet_module`), and
//! resolving a name whose dots were flattened to `_` (`down_blocks_1_attentions_0_…`, what
//! ai-toolkit writes as `lora_unet_<name>`) back to its dotted form (`resolve_flat`).
//!
//! `_` is both the separator and part of words (`transformer_blocks`, `to_out`, `linear_1`), so a
//! flat name is split every way that uses only the grammar's words and numbers, and the split is
//! accepted only when exactly one way is a module of the grammar; nothing is guessed.

use super::kohya::UnetLayout;

/// Every word of the grammar (numbers aside).
const WORDS: &[&str] = &[
    "add_embedding",
    "attentions",
    "attn1",
    "attn2",
    "conv",
    "conv1",
    "conv2",
    "conv_in",
    "conv_norm_out",
    "conv_out",
    "conv_shortcut",
    "down_blocks",
    "downsamplers",
    "ff",
    "linear_1",
    "linear_2",
    "mid_block",
    "net",
    "norm",
    "norm1",
    "norm2",
    "norm3",
    "proj",
    "proj_in",
    "proj_out",
    "resnets",
    "time_emb_proj",
    "time_embedding",
    "to_k",
    "to_out",
    "to_q",
    "to_v",
    "transformer_blocks",
    "up_blocks",
    "upsamplers",
];

/// Longest flat name looked at (SDXL's longest is under 80 bytes).
const MAX_FLAT: usize = 200;

/// A canonical decimal index (`0`, `12`; not `012`, `+1` or empty).
pub fn index(s: &str) -> Option<u32> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

fn resnet_leaf(p: &[&str]) -> bool {
    matches!(
        p,
        ["conv1" | "conv2" | "time_emb_proj" | "conv_shortcut" | "norm1" | "norm2"]
    )
}

fn transformer_leaf(p: &[&str]) -> bool {
    matches!(
        p,
        ["attn1" | "attn2", "to_q" | "to_k" | "to_v"]
            | ["attn1" | "attn2", "to_out", "0"]
            | ["ff", "net", "0", "proj"]
            | ["ff", "net", "2"]
            | ["norm1" | "norm2" | "norm3"]
    )
}

fn attention(p: &[&str]) -> bool {
    match p {
        ["proj_in" | "proj_out" | "norm"] => true,
        ["transformer_blocks", k, rest @ ..] => index(k).is_some() && transformer_leaf(rest),
        _ => false,
    }
}

/// Whether `name` (dotted, no `unet.` prefix) is a layer of an SDXL-like UNet with `layout`.
/// Block and transformer-block counts are not bounded (they differ between SDXL and smaller
/// test UNets); the per-block layer counts, which the sgm numbering depends on, are.
pub fn is_unet_module(name: &str, layout: UnetLayout) -> bool {
    let p: Vec<&str> = name.split('.').collect();
    let l = layout.layers_per_block;
    let below = |s: &str, n: u32| index(s).is_some_and(|v| v < n);
    match p.as_slice() {
        ["conv_in" | "conv_out" | "conv_norm_out"] => true,
        ["time_embedding" | "add_embedding", "linear_1" | "linear_2"] => true,
        ["down_blocks", i, "resnets", j, rest @ ..] => {
            index(i).is_some() && below(j, l) && resnet_leaf(rest)
        }
        ["down_blocks", i, "attentions", j, rest @ ..] => {
            index(i).is_some() && below(j, l) && attention(rest)
        }
        ["up_blocks", i, "resnets", j, rest @ ..] => {
            index(i).is_some() && below(j, l.saturating_add(1)) && resnet_leaf(rest)
        }
        ["up_blocks", i, "attentions", j, rest @ ..] => {
            index(i).is_some() && below(j, l.saturating_add(1)) && attention(rest)
        }
        ["down_blocks", i, "downsamplers", "0", "conv"]
        | ["up_blocks", i, "upsamplers", "0", "conv"] => index(i).is_some(),
        ["mid_block", "resnets", "0" | "1", rest @ ..] => resnet_leaf(rest),
        ["mid_block", "attentions", "0", rest @ ..] => attention(rest),
        _ => false,
    }
}

/// What a flattened name resolves to.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved {
    One(String),
    None,
    /// More than one module flattens to this name (never for the grammar above; kept so a
    /// future word cannot make the converter pick one silently).
    Many(Vec<String>),
}

/// Resolves `down_blocks_1_attentions_0_proj_in` → `down_blocks.1.attentions.0.proj_in`.
pub fn resolve_flat(flat: &str, layout: UnetLayout) -> Resolved {
    if flat.is_empty() || flat.len() > MAX_FLAT {
        return Resolved::None;
    }
    let mut found = Vec::new();
    let mut words = Vec::new();
    split(flat, &mut words, &mut found, layout);
    match found.len() {
        0 => Resolved::None,
        1 => Resolved::One(found.remove(0)),
        _ => Resolved::Many(found),
    }
}

/// Depth-first over the ways to split `rest` into grammar words and numbers. Every step
/// consumes at least one byte, and `found` is capped, so the work is bounded.
fn split<'a>(rest: &'a str, words: &mut Vec<&'a str>, found: &mut Vec<String>, layout: UnetLayout) {
    if found.len() > 4 {
        return;
    }
    if rest.is_empty() {
        let name = words.join(".");
        if is_unet_module(&name, layout) {
            found.push(name);
        }
        return;
    }
    let number_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    let mut lens: Vec<usize> = WORDS
        .iter()
        .filter(|w| rest.starts_with(**w))
        .map(|w| w.len())
        .collect();
    if number_len > 0 {
        lens.push(number_len);
    }
    for n in lens {
        let tail = &rest[n..];
        let next = match tail.strip_prefix('_') {
            Some(t) if !t.is_empty() => t,
            Some(_) => continue,
            None if tail.is_empty() => tail,
            None => continue,
        };
        words.push(&rest[..n]);
        split(next, words, found, layout);
        words.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: UnetLayout = UnetLayout::SDXL;

    #[test]
    fn the_grammar_knows_sdxl_layers_and_refuses_others() {
        for ok in [
            "conv_in",
            "time_embedding.linear_2",
            "add_embedding.linear_1",
            "down_blocks.0.resnets.1.conv_shortcut",
            "down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_out.0",
            "down_blocks.1.downsamplers.0.conv",
            "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj",
            "mid_block.resnets.1.time_emb_proj",
            "up_blocks.0.attentions.2.proj_out",
            "up_blocks.1.upsamplers.0.conv",
            "up_blocks.2.resnets.2.conv2",
        ] {
            assert!(is_unet_module(ok, L), "{ok}");
        }
        for bad in [
            "",
            "conv_in.x",
            "down_blocks.0.resnets.2.conv1", // only 2 resnets per down block
            "up_blocks.0.resnets.3.conv1",   // 3 per up block
            "down_blocks.01.resnets.0.conv1",
            "down_blocks.x.resnets.0.conv1",
            "mid_block.resnets.2.conv1",
            "mid_block.attentions.1.proj_in",
            "down_blocks.1.attentions.0.transformer_blocks.0.attn3.to_q",
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.1",
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1",
            "text_model.encoder.layers.0.mlp.fc1",
        ] {
            assert!(!is_unet_module(bad, L), "{bad}");
        }
    }

    #[test]
    fn flat_names_resolve_to_exactly_one_module() {
        let cases = [
            (
                "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_k",
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_k",
            ),
            (
                "up_blocks_0_attentions_2_transformer_blocks_9_attn2_to_out_0",
                "up_blocks.0.attentions.2.transformer_blocks.9.attn2.to_out.0",
            ),
            (
                "mid_block_attentions_0_transformer_blocks_3_ff_net_0_proj",
                "mid_block.attentions.0.transformer_blocks.3.ff.net.0.proj",
            ),
            ("time_embedding_linear_1", "time_embedding.linear_1"),
            ("conv_norm_out", "conv_norm_out"),
            (
                "down_blocks_0_resnets_1_time_emb_proj",
                "down_blocks.0.resnets.1.time_emb_proj",
            ),
            (
                "up_blocks_1_upsamplers_0_conv",
                "up_blocks.1.upsamplers.0.conv",
            ),
        ];
        for (flat, want) in cases {
            assert_eq!(resolve_flat(flat, L), Resolved::One(want.into()), "{flat}");
        }
        for bad in [
            "",
            "_",
            "down_blocks_1_",
            "down_blocks__1_attentions_0_proj_in",
            "down_blocks_1_attentions_0_proj_in_",
            "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_k_extra",
            "input_blocks_4_1_proj_in",
            "down_blocks_1_attentions_2_proj_in",
            &"conv_".repeat(100),
            &"conv_in_proj_in_".repeat(12),
        ] {
            assert_eq!(resolve_flat(bad, L), Resolved::None, "{bad:?}");
        }
    }

    /// Every module of a full SDXL UNet flattens to a name that resolves back to it alone.
    #[test]
    fn every_sdxl_module_round_trips_through_its_flat_name() {
        let mut names = vec![
            "conv_in".to_owned(),
            "conv_out".to_owned(),
            "time_embedding.linear_1".to_owned(),
            "add_embedding.linear_2".to_owned(),
        ];
        let tb = |prefix: &str, depth: u32, names: &mut Vec<String>| {
            for leaf in ["proj_in", "proj_out"] {
                names.push(format!("{prefix}.{leaf}"));
            }
            for k in 0..depth {
                for leaf in [
                    "attn1.to_q",
                    "attn1.to_k",
                    "attn2.to_v",
                    "attn2.to_out.0",
                    "ff.net.0.proj",
                    "ff.net.2",
                ] {
                    names.push(format!("{prefix}.transformer_blocks.{k}.{leaf}"));
                }
            }
        };
        for (i, depth) in [(0u32, 0u32), (1, 2), (2, 10)] {
            for j in 0..2 {
                for leaf in ["conv1", "conv2", "time_emb_proj", "conv_shortcut"] {
                    names.push(format!("down_blocks.{i}.resnets.{j}.{leaf}"));
                }
                if depth > 0 {
                    tb(
                        &format!("down_blocks.{i}.attentions.{j}"),
                        depth,
                        &mut names,
                    );
                }
            }
            names.push(format!("down_blocks.{i}.downsamplers.0.conv"));
            for j in 0..3 {
                names.push(format!("up_blocks.{i}.resnets.{j}.conv1"));
                tb(&format!("up_blocks.{i}.attentions.{j}"), depth, &mut names);
            }
            names.push(format!("up_blocks.{i}.upsamplers.0.conv"));
        }
        tb("mid_block.attentions.0", 10, &mut names);
        names.push("mid_block.resnets.1.conv2".to_owned());
        assert!(names.len() > 400);
        for name in names {
            assert!(is_unet_module(&name, L), "{name}");
            assert_eq!(
                resolve_flat(&name.replace('.', "_"), L),
                Resolved::One(name.clone())
            );
        }
    }
}
