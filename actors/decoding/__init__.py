"""Decoding engines. The reference engine is LLaDA's semi-autoregressive sampler."""

from actors.decoding.reference import DecodeOutput, ReferenceDecoder

__all__ = ["DecodeOutput", "ReferenceDecoder"]
