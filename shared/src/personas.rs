//! The spirits a session can summon. A session keeps the persona it was created with.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Persona {
    pub id: String,
    pub name: String,
    pub description: String,
}

/// The personas on offer, in display order; the first is the default.
#[derive(Debug, Clone)]
pub struct Personas {
    all: Vec<Persona>,
}

impl Personas {
    pub fn built_in() -> Self {
        let persona = |id: &str, name: &str, description: &str| Persona {
            id: id.to_owned(),
            name: name.to_owned(),
            description: description.to_owned(),
        };
        Self {
            all: vec![
                persona(
                    "madame-veyra",
                    "Madame Veyra",
                    "A Victorian medium who passed in 1891: courteous, theatrical, fond of riddles.",
                ),
                persona(
                    "captain-hollow",
                    "Captain Hollow",
                    "A drowned sea captain, gruff and superstitious, who answers in few words.",
                ),
                persona(
                    "the-archivist",
                    "The Archivist",
                    "An ancient, dry-witted keeper of records who speaks in dates and numbers.",
                ),
            ],
        }
    }

    pub fn all(&self) -> &[Persona] {
        &self.all
    }

    pub fn get(&self, id: &str) -> Option<&Persona> {
        self.all.iter().find(|p| p.id == id)
    }

    pub fn default_id(&self) -> &str {
        self.all.first().map_or("", |p| p.id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_are_distinct_and_have_a_default() {
        let personas = Personas::built_in();
        assert!(personas.all().len() >= 3);
        let mut ids: Vec<_> = personas.all().iter().map(|p| p.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), personas.all().len());
        assert_eq!(personas.default_id(), "madame-veyra");
        assert!(personas.get("captain-hollow").is_some());
        assert!(personas.get("nobody").is_none());
    }
}
