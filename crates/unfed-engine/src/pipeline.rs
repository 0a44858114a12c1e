//! Shards run in sequence in one process: hidden states pass from each shard to the next exactly
//! as they would over the network, so this is also the reference for the networked path.

use unfed_model::{Input, LogitsMode, ShardModel};

use crate::{EngineError, Result};

/// Shards covering a whole model, in layer order.
pub struct Pipeline {
    shards: Vec<ShardModel>,
}

/// One conversation's state: a KV cache per shard and the tokens fed so far.
pub struct Session {
    caches: Vec<unfed_model::KvCache>,
    tokens: Vec<u32>,
}

impl Session {
    /// Every token fed to the model so far (prompt and generated).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
}

impl Pipeline {
    /// Checks that the shards cover the model's layers contiguously, embedding first and head
    /// last.
    pub fn new(shards: Vec<ShardModel>) -> Result<Self> {
        let bad = |m: String| Err(EngineError::Pipeline(m));
        let (Some(first), Some(last)) = (shards.first(), shards.last()) else {
            return bad("no shards".into());
        };
        if !first.role().embedding {
            return bad("the first shard has no token embedding".into());
        }
        if !last.role().head {
            return bad("the last shard has no output head".into());
        }
        let cfg = first.config();
        let mut next = 0;
        for (i, s) in shards.iter().enumerate() {
            if s.config() != cfg {
                return bad(format!("shard {i} belongs to a different model"));
            }
            let r = &s.role().layers;
            if r.start != next {
                return bad(format!(
                    "shard {i} starts at layer {} but layer {next} comes next",
                    r.start
                ));
            }
            if i > 0 && s.role().embedding || i + 1 < shards.len() && s.role().head {
                return bad(format!(
                    "shard {i} has an embedding or head in the middle of the pipeline"
                ));
            }
            next = r.end;
        }
        if next != cfg.n_layer {
            return bad(format!("the shards end at layer {next} of {}", cfg.n_layer));
        }
        Ok(Self { shards })
    }

    pub fn shards(&self) -> &[ShardModel] {
        &self.shards
    }

    pub fn config(&self) -> &unfed_model::ModelConfig {
        self.shards[0].config()
    }

    pub fn new_session(&self) -> Session {
        Session {
            caches: self.shards.iter().map(ShardModel::new_cache).collect(),
            tokens: Vec::new(),
        }
    }

    /// Feeds tokens through every shard; returns the logits after the last one.
    pub fn step(&self, session: &mut Session, ids: &[u32]) -> Result<Vec<f32>> {
        let mut hidden = None;
        for (shard, cache) in self.shards.iter().zip(session.caches.iter_mut()) {
            let input = match &hidden {
                None => Input::Tokens(ids),
                Some(h) => Input::Hidden(h),
            };
            hidden = Some(shard.forward(input, cache, LogitsMode::Last)?);
        }
        session.tokens.extend_from_slice(ids);
        let logits = hidden.expect("a pipeline has at least one shard");
        Ok(logits.flatten_all()?.to_vec1()?)
    }
}
