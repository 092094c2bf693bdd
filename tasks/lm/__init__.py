"""The language-model helpers the stages share: model loading, sites, corpus reading, the embedded default."""
