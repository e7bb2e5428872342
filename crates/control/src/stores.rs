//! Opened storage accounts, by URL, shared by every part that uses them.

use std::collections::HashMap;
use std::sync::Mutex;

use ferry_storage::DynStore;

use crate::error::{ControlError, Result};

#[derive(Default)]
pub(crate) struct Stores {
    open: Mutex<HashMap<String, DynStore>>,
}

impl Stores {
    pub fn get(&self, url: &str) -> Result<DynStore> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = open.get(url) {
            return Ok(s.clone());
        }
        let s = ferry_storage::open(url).map_err(|e| ControlError::invalid(e.to_string()))?;
        open.insert(url.to_string(), s.clone());
        Ok(s)
    }
}
