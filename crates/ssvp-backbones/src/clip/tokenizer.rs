//! OpenAI CLIP byte-level BPE tokenizer (being written in this session).
