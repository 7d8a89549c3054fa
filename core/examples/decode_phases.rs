//! Wall time of the phases of a batched greedy decode (prefill, per-step forward, logits copy,
//! argmax), to see where a decode step goes beyond the matmuls.
//! `cargo run --release -p rllr-core --example decode_phases -- models/smollm2-135m-instruct 32`
use std::time::Instant;

use candle_core::{DType, Device};
use rllr_core::checkpoint::Checkpoint;
use rllr_core::{Batch, ForwardCtx, KvCache, PaddingSide};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or("models/smollm2-135m-instruct".into());
    let b: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(8);
    let model = Checkpoint::open(&dir)?.load_model(DType::F32, &Device::Cpu)?;
    let prompts: Vec<Vec<u32>> = (0..b)
        .map(|i| {
            (0..32)
                .map(|j| 100 + ((i * 31 + j * 7) % 5000) as u32)
                .collect()
        })
        .collect();
    for round in 0..2 {
        let t0 = Instant::now();
        let batch = Batch::new(&prompts, 0, PaddingSide::Left, &Device::Cpu)?;
        let mut cache = KvCache::new(model.config().num_hidden_layers);
        let mut logits = model.prefill(&batch, &mut cache, &ForwardCtx::default())?;
        let prefill = t0.elapsed();
        let (mut fwd, mut host) = (0f64, 0f64);
        for _ in 0..63 {
            let t = Instant::now();
            let rows = logits.to_vec2::<f32>()?;
            let next: Vec<u32> = rows
                .iter()
                .map(|r| {
                    r.iter()
                        .enumerate()
                        .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a })
                        .0 as u32
                })
                .collect();
            host += t.elapsed().as_secs_f64();
            let t = Instant::now();
            logits = model.decode_step(&next, &mut cache, &ForwardCtx::default())?;
            fwd += t.elapsed().as_secs_f64();
        }
        println!(
            "round {round} b {b}: prefill {:.3} s, 63 steps forward {:.3} s ({:.1} ms/step), host {:.3} s, total {:.3} s",
            prefill.as_secs_f64(),
            fwd,
            fwd / 63.0 * 1e3,
            host,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
