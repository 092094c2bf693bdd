"""The language-model helpers the stages share."""
