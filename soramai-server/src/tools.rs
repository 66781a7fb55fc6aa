//! The command line's model tools: tokenize, generate, logits, train (with its loss curve),
//! merge and export-lora.

use std::sync::Arc;
use std::time::Instant;

use soramai::local;

use crate::{GenerateArgs, TrainArgs};

pub(crate) fn merge(
    model: &std::path::Path,
    adapter: &std::path::Path,
    out: &std::path::Path,
    ty: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let ty: local::MergeType = ty.parse()?;
    let m = local::Model::load(model)?;
    let a = local::Adapter::load(adapter, &m.config)?;
    let w = local::merge(&m, &a, ty)?;
    w.write(out)?;
    eprintln!("merged {} into {}", adapter.display(), out.display());
    Ok(())
}

pub(crate) fn export_lora(
    model: &std::path::Path,
    adapter: &std::path::Path,
    out: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let m = local::Model::load(model)?;
    let a = local::Adapter::load(adapter, &m.config)?;
    local::to_llama_lora(&m.config, &a)?.write(out)?;
    eprintln!("wrote {} as a llama.cpp LoRA to {}", adapter.display(), out.display());
    Ok(())
}

/// Largest training file read.
const MAX_TRAIN_FILE: u64 = 1 << 30;

pub(crate) fn train(a: &TrainArgs) -> Result<(), Box<dyn std::error::Error>> {
    use local::Target;
    use local::{AdamW, Schedule, TrainConfig, Trainer, batch_plan};
    use std::io::Read;

    let mut targets = Vec::new();
    for m in a.targets.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        targets.push(Target::from_module(m).ok_or_else(|| format!("unknown target module {m:?}"))?);
    }
    let schedule = match a.schedule.as_str() {
        "linear" => Schedule::Linear,
        "cosine" => Schedule::Cosine,
        "constant" => Schedule::Constant,
        other => return Err(format!("schedule {other:?} is not linear, cosine or constant").into()),
    };
    if a.batch_size == 0 || a.epochs == 0 || a.steps == Some(0) {
        return Err("batch size, epochs and steps must be at least 1".into());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(&a.data)
        .map_err(|e| format!("{}: {e}", a.data.display()))?
        .take(MAX_TRAIN_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_TRAIN_FILE {
        return Err(format!("{} is larger than {MAX_TRAIN_FILE} bytes", a.data.display()).into());
    }
    let conversations = soramai::finetune::parse_chat_jsonl(&bytes)?;
    let engine = local::Engine::load(&a.model)?;
    let (examples, data_report) = soramai::finetune::examples(&engine, &conversations, a.max_seq)?;
    eprintln!(
        "{} examples, {} tokens ({} trained), longest {} tokens, {} cut to {}",
        data_report.examples,
        data_report.tokens,
        data_report.trained_tokens,
        data_report.longest,
        data_report.truncated_lines.len(),
        a.max_seq
    );
    let plan = batch_plan(examples.len(), a.batch_size, a.epochs, a.seed);
    let steps = a.steps.unwrap_or(plan.len());
    let config = TrainConfig {
        rank: a.rank,
        alpha: a.alpha,
        targets,
        learning_rate: a.learning_rate,
        adamw: AdamW { weight_decay: a.weight_decay, ..AdamW::default() },
        warmup_steps: a.warmup,
        schedule,
        total_steps: steps,
        max_seq: a.max_seq,
        seed: a.seed,
        checkpoint_activations: a.checkpoint_activations,
        base_model: a.base_model_name.clone(),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(Arc::clone(&engine.model), config)?;
    let bar = indicatif::ProgressBar::new(steps as u64);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} elapsed, eta {eta_precise}]",
    )?);
    let started = Instant::now();
    let mut history = Vec::with_capacity(steps);
    let mut tokens = 0usize;
    for i in 0..steps {
        let batch: Vec<_> = plan[i % plan.len()].iter().map(|&j| examples[j].clone()).collect();
        let s = trainer.step(&batch)?;
        tokens += s.tokens;
        let rate = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("loss {:.4}  {rate:.0} tokens/s", s.loss));
        bar.inc(1);
        history.push(s);
    }
    bar.finish();
    std::fs::create_dir_all(&a.out)?;
    trainer.adapter().save(&a.out, &engine.model.config)?;
    let secs = started.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "config": trainer.config(),
        "data": data_report,
        "steps": history,
        "seconds": secs,
        "tokens_per_second": tokens as f64 / secs.max(1e-9),
    });
    std::fs::write(a.out.join("training.json"), serde_json::to_vec_pretty(&summary)?)?;
    loss_curve(&a.out.join("loss.svg"), &history.iter().map(|s| s.loss).collect::<Vec<_>>())?;
    let first = history.first().map_or(0.0, |s| s.loss);
    let last = history.last().map_or(0.0, |s| s.loss);
    eprintln!(
        "loss {first:.4} -> {last:.4} in {steps} steps, {:.0} tokens/s; adapter in {}",
        tokens as f64 / secs.max(1e-9),
        a.out.display()
    );
    Ok(())
}

/// The training loss per step as an SVG line chart.
pub(crate) fn loss_curve(path: &std::path::Path, losses: &[f32]) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = losses.iter().copied().fold(0f32, f32::max).max(1e-3) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption("training loss", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(1f32..(losses.len().max(2) as f32), 0f32..top)?;
    chart.configure_mesh().x_desc("step").y_desc("loss").draw()?;
    chart.draw_series(LineSeries::new(losses.iter().enumerate().map(|(i, &l)| ((i + 1) as f32, l)), &BLUE))?;
    root.present()?;
    Ok(())
}

pub(crate) fn tokenize(
    model: &std::path::Path,
    no_special: bool,
    text: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let g = local::Gguf::open(model)?;
    let tk = local::Tokenizer::from_gguf(&g)?;
    println!("{}", serde_json::to_string(&tk.encode(text, true, !no_special))?);
    Ok(())
}

pub(crate) fn generate(a: &GenerateArgs) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::Write;
    let engine = local::Engine::load(&a.model)?;
    let mut adapter = None;
    for (i, dir) in a.adapter.iter().enumerate() {
        let name = format!("adapter-{i}");
        engine.load_adapter(&name, dir)?;
        adapter.get_or_insert(name);
    }
    let prompt = if a.chat {
        engine.chat_tokens(&[local::Message::new("user", &a.prompt)])?
    } else {
        engine.tokenizer.encode(&a.prompt, true, true)
    };
    let req = local::Request {
        prompt,
        adapter,
        max_tokens: a.max_tokens,
        sampling: local::SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repeat_penalty: a.repeat_penalty,
            repeat_last_n: 64,
            seed: a.seed,
            ..local::SamplingParams::default()
        },
        stop: a.stop.clone(),
        precision: a.precision.parse()?,
        logprobs: None,
        prefix_scope: None,
        constraint: None,
    };
    let json = a.json;
    let mut stdout = std::io::stdout();
    let g = engine.generate(&req, &mut |_, piece| {
        if !json {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
        true
    })?;
    if json {
        let v = serde_json::json!({"prompt_ids": g.prompt_ids, "output_ids": g.output_ids, "text": g.text});
        println!("{v}");
    } else {
        println!();
    }
    Ok(())
}

pub(crate) fn logits(
    model: &std::path::Path,
    adapter: Option<&std::path::Path>,
    no_special: bool,
    precision: &str,
    prompt: &str,
    out: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let engine = local::Engine::load(model)?;
    if let Some(dir) = adapter {
        engine.load_adapter("adapter", dir)?;
    }
    let ids = engine.tokenizer.encode(prompt, true, !no_special);
    let l = engine.logits(&ids, adapter.map(|_| "adapter"), precision.parse()?)?;
    std::fs::write(out, local::npy_f32_vector(&l))?;
    Ok(())
}
