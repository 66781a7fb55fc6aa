//! A trainer's whole state as bytes (configuration, adapter, optimizer moments, step) for a
//! fine-tuning job's checkpoints, and back.

use super::*;

impl Trainer {
    /// The whole training state (pairs, optimizer moments, step, configuration) as safetensors
    /// bytes: what a checkpoint stores.
    pub fn save_state(&self) -> Result<Vec<u8>> {
        let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
        for (&(l, t), p) in &self.pairs {
            for (name, param, shape) in
                [("A", &p.a, [self.config.rank, p.in_f]), ("B", &p.b, [p.out_f, self.config.rank])]
            {
                for (part, v) in [("value", &param.value), ("m", &param.m), ("v", &param.v)] {
                    let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    tensors.push((format!("{l}.{}.{name}.{part}", t.module()), bytes, shape.to_vec()));
                }
            }
        }
        let views = tensors
            .iter()
            .map(|(n, d, s)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::Training(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut meta = HashMap::new();
        meta.insert("step".to_owned(), self.step.to_string());
        meta.insert(
            "config".to_owned(),
            serde_json::to_string(&self.config).map_err(|e| Error::Training(e.to_string()))?,
        );
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::Training(e.to_string()))
    }

    /// A trainer restored from [`Trainer::save_state`] bytes, continuing where it stopped.
    pub fn load_state(model: Arc<Model>, bytes: &[u8]) -> Result<Self> {
        Self::restore(model, bytes, true)
    }
}
