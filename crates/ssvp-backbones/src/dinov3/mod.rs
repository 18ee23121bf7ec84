//! DINOv3 vision transformers (being written in this session).
