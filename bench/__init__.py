import warnings

# peft reads transformers' deprecated `is_gradient_checkpointing` on every model it wraps: noise
# a user cannot act on, printed once per run process
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
