"""The built-in CPU demo: generated review prompts (`reviews`), its tiny base model and
prompt tables built on first use (`assets`), and the rule-based critic that stands in for
an LLM judge (`rule_critic`)."""
