"""A user's own models, as `model: "module:factory"` names them in a pipeline YAML of this folder."""
