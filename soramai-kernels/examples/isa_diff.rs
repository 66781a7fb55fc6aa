//! Compares last-position logits of the fast path on each instruction set (a debugging aid).
use soramai_kernels::cpu::{Isa, set_isa};
use soramai_kernels::{Engine, Precision};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: isa_diff MODEL.gguf")?;
    let e = Engine::load(path)?;
    let ids = e.tokenizer.encode("The capital of France is", true, true);
    let mut runs = Vec::new();
    for isa in [Isa::Scalar, Isa::Avx2] {
        set_isa(isa);
        for p in [Precision::Fast, Precision::Exact] {
            let l = e.logits(&ids, None, p)?;
            let top = l.iter().enumerate().fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
            println!("{isa:?} {p:?}: top {top:?}");
            runs.push(l);
        }
    }
    let d = runs[0].iter().zip(&runs[2]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!("max |scalar fast - avx2 fast| = {d}");
    Ok(())
}
