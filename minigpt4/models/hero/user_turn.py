"""The LLM's user turn: the video placeholder, the evidence brief, the transcript line, the instruction.

Plain text assembly, kept apart from `LLMReasoner` (which embeds the turn and puts the context in
the placeholder) so the brief's layout can be read and tested without loading an LLM.
"""
from __future__ import annotations

from typing import Optional, Sequence

from minigpt4.common.modalities import IMAGE_TOKEN, VIDEO_PLACEHOLDER

BRIEF_HEADER = "Evidence from the observation experts:"


def compose_user_turn(instruction: str, brief: Sequence[tuple[str, str]], spoken: Optional[str] = None) -> str:
    """The user turn: video placeholder, the evidence brief, the spoken-words line, the instruction.

    `instruction` may contain the `<video><VideoHere></video>` placeholder once (text before it
    stays before it); without one, the placeholder is put first. `brief` holds (tag, sentence)
    pairs in the order they should be read; each becomes a line `[tag] sentence`. `spoken` is
    the transcript line (`model.transcript_template` filled), None or empty for none.
    """
    count = instruction.count(VIDEO_PLACEHOLDER)
    if count > 1:
        raise ValueError(f"instruction contains {VIDEO_PLACEHOLDER} {count} times; expected at most once: {instruction!r}")
    if instruction.count(IMAGE_TOKEN) != count:
        raise ValueError(f"instruction contains a bare {IMAGE_TOKEN} outside {VIDEO_PLACEHOLDER}: {instruction!r}")
    before, _, after = instruction.partition(VIDEO_PLACEHOLDER) if count else ("", "", instruction)
    lines = [f"[{tag}] {' '.join(sentence.split())}" for tag, sentence in brief if sentence and sentence.strip()]
    brief_text = ("\n" + BRIEF_HEADER + "\n" + "\n".join(lines)) if lines else ""
    spoken_text = f"\n{' '.join(spoken.split())}" if spoken and spoken.strip() else ""
    return f"{before}{VIDEO_PLACEHOLDER}{brief_text}{spoken_text}\n{after.strip()}".strip()
