"""Models: resolve a spec string, format chats with prefill, generate in batches, read log-probs and hidden
states."""

from alignscope.models.base import (
    ChatModel,
    Conversation,
    GenerationConfig,
    Message,
    ModelError,
    NoLogprobsError,
    user_turn,
)
from alignscope.models.loading import DEFAULT_MODEL, cache_dir, load_chat_model, load_model
from alignscope.models.local import PLAIN_TEMPLATE, LocalModel, ResponseBatch, pick_device, pick_dtype

__all__ = [
    "DEFAULT_MODEL",
    "PLAIN_TEMPLATE",
    "ChatModel",
    "Conversation",
    "GenerationConfig",
    "LocalModel",
    "Message",
    "ModelError",
    "NoLogprobsError",
    "ResponseBatch",
    "cache_dir",
    "load_chat_model",
    "load_model",
    "pick_device",
    "pick_dtype",
    "user_turn",
]
