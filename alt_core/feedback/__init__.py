"""Feedback providers: score generations with a reward or textual feedback.

`get_provider(config)` returns the provider named in `feedback.provider`; every provider
implements `FeedbackProvider.score(df) -> DataFrame` (see `base`).
"""

from alt_core.feedback.base import (
    FEEDBACK_COLUMNS,
    PROVIDERS,
    FeedbackProvider,
    feedback_frame,
    get_provider,
)

__all__ = ["FEEDBACK_COLUMNS", "PROVIDERS", "FeedbackProvider", "feedback_frame", "get_provider"]
