"""HERO's model modules. Kept import-free so that light users (feature extraction, AU tools)
don't pull the LLM stack; `minigpt4.models` imports `hero_model`, which registers `hero`."""
