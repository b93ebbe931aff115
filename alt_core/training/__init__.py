"""Conditional SFT of the policy: the job spec (`spec`), its data and batches (`data`),
model loading (`model`), the loop (`loop`), resumable checkpoints (`state`), the process
group (`dist`) and the job that runs it in a child process (`worker`)."""
