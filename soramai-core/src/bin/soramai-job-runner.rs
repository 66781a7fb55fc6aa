//! The job runner binary: the child process each job runs in (see `soramai_core::jobs::runner`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(soramai_core::jobs::runner::main(&args));
}
