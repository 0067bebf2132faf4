//! `GET /v1/models` and `GET /v1/models/{id}`: the served model first, then the models in the
//! local Hugging Face cache (`models--ORG--NAME` folders, listed as `ORG/NAME`), so clients
//! that pick a model from the list see what this machine has. Only the served model answers
//! inference requests; the others are listed for discovery.

use std::path::Path;

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;
use crate::model::resolve::hf_cache_dir;

fn entry(id: &str, created: u64, owned_by: &str) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": owned_by})
}

/// `ORG/NAME` of every model repo in the cache, sorted, with its folder's mtime.
fn cached_models(cache: &Path) -> Vec<(String, u64)> {
    let Ok(dir) = std::fs::read_dir(cache) else {
        return Vec::new();
    };
    let mut out: Vec<(String, u64)> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let repo = name.strip_prefix("models--")?;
            let id = repo.replacen("--", "/", 1);
            let created = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            Some((id, created))
        })
        .collect();
    out.sort();
    out
}

fn all_models(state: &AppState) -> Vec<Value> {
    let mut list = vec![entry(&state.model_id, state.created, "kooka")];
    for (id, created) in cached_models(&hf_cache_dir()) {
        if !state.serves(&id) {
            list.push(entry(&id, created, "huggingface-cache"));
        }
    }
    list
}

pub async fn list(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"object": "list", "data": all_models(&state)}))
}

/// `/v1/models/{id}`; ids with a slash (`ORG/NAME`) arrive as the tail of the path.
pub async fn get(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    if state.serves(&id) {
        return Ok(HttpResponse::Ok().json(entry(&state.model_id, state.created, "kooka")));
    }
    all_models(&state)
        .into_iter()
        .find(|m| m["id"] == id.as_str())
        .map(|m| HttpResponse::Ok().json(m))
        .ok_or(ApiError::ModelNotFound(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_cache_repos_as_org_slash_name() {
        let dir = std::env::temp_dir().join(format!("kooka-models-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in [
            "models--mlx-community--Qwen3-4B-4bit",
            "models--a--b--c",
            "datasets--x--y",
        ] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let ids: Vec<String> = cached_models(&dir).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec!["a/b--c", "mlx-community/Qwen3-4B-4bit"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
