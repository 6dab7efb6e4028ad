"""The chat format every local model speaks: Phi-3's, since ftpilot's default base model is Phi-3.

Training text and inference prompts both come from ``tokenizer.apply_chat_template`` with this
template, so a model fine-tuned locally sees at serving time exactly the markup it was trained on.
A real base model keeps its own template when it has one; a tokenizer without one (and the tiny
stand-in models) gets this.
"""

from __future__ import annotations

SYSTEM, USER, ASSISTANT, END, END_OF_TEXT = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"
SPECIAL_TOKENS = [END_OF_TEXT, SYSTEM, USER, ASSISTANT, END]
# Generation stops at the end of the assistant's turn or at the end of the text.
STOP_TOKENS = [END, END_OF_TEXT]

# Phi-3-mini-4k-instruct's template: each turn is "<|role|>\n{content}<|end|>\n"; a prompt for
# generation ends with "<|assistant|>\n", a training example with the end-of-text token.
PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] in ['system', 'user', 'assistant'] %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
