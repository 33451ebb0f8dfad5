"""Fine-tuning on SelFee chains: the SFT set, the tiny model, the Ray Train + DeepSpeed job,
export to a Hugging Face directory, and delta weights."""
