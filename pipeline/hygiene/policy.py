"""Filter policy and run config [ours]: pydantic models (unknown fields rejected, errors name the field)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pipeline.models.constants import UNKNOWN_LABEL
from pipeline.output import PROVENANCE_VERDICTS, ScanDate
from pipeline.runner import ErrorBudgetConfig
from pipeline.settings import ConfigError, StrictModel
from pipeline.storage import check_output_outside

Action = Literal["keep", "drop", "quarantine"]


class GeneratorRule(StrictModel):
    """Applies to `ok` rows whose `top_generator` equals `generator` (first matching rule wins).

    With `threshold` set, the row is flagged when `p_fake >= threshold`; without it the policy's base decision
    (explicit threshold or the scan's calibrated `is_fake`) flags it. Flagged rows get `action`; others are
    kept. Examples: quarantine everything attributed to `unknown` (`threshold: 0.0`), drop `upconv` above
    0.9."""

    generator: str = Field(min_length=1)
    action: Action
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class ProvenanceRule(StrictModel):
    """Applies to sample rows whose `provenance_verdict` (scan schema v3; docs/provenance.md) equals
    `verdict`, whatever their score or status, BEFORE the generator rules and the base decision (first
    matching rule wins). Inline: `--rule verdict:ai_declared=drop`. Example: drop every image that declares
    itself generated, quarantine those whose C2PA manifest fails validation (`invalid`) for review."""

    verdict: Literal[PROVENANCE_VERDICTS]  # type: ignore[valid-type]
    action: Action


class FilterPolicy(StrictModel):
    """What the nightly filter does with each scanned sample."""

    threshold: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="explicit p_fake threshold; None = use the scan's calibrated is_fake column",
    )
    fake_action: Literal["drop", "quarantine"] = "drop"
    generator_rules: list[GeneratorRule] = Field(default_factory=list)
    provenance_rules: list[ProvenanceRule] = Field(
        default_factory=list,
        description="rules on the scan's provenance_verdict, applied first (rows of scans older "
        "than schema v3 have no verdict and match none)",
    )
    error_action: Action = Field(
        default="keep",
        description="decode_error / no_image / too_large rows: keep (and report), drop or quarantine",
    )
    on_shard_error: Literal["fail", "skip"] = Field(
        default="fail",
        description="a shard the scan could not read to its end: refuse the run, or leave it out "
        "of the output",
    )

    @field_validator("provenance_rules", "generator_rules")
    @classmethod
    def _one_rule_each(cls, rules: list, info: ValidationInfo) -> list:
        key = "verdict" if info.field_name == "provenance_rules" else "generator"
        values = [getattr(r, key) for r in rules]
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            raise ValueError(f"two rules for {key} {dup[0]!r}")
        return rules

    def check_labels(self, labels: Sequence[str], *, where: str) -> None:
        """Refuse a rule naming a label the scan's detector never writes (a misspelled generator would
        otherwise match nothing, silently). `labels` are the detector's ["real", *generators]."""
        known = [*labels, *([UNKNOWN_LABEL] if UNKNOWN_LABEL not in labels else [])]
        bad = [r.generator for r in self.generator_rules if r.generator not in known]
        if bad:
            raise ConfigError(
                f"generator_rules: {', '.join(repr(b) for b in bad)} "
                f"{'is not a label' if len(bad) == 1 else 'are not labels'} of {where}; "
                f"known labels: {', '.join(known)}"
            )


class FilterConfig(ErrorBudgetConfig):
    """One filter run: inputs, outputs and the policy. Saved as `<output>/_run/config.json`."""

    scan: str = Field(min_length=1, description="scan output root (holds scan_date=*/ and _shards/)")
    input: str = Field(min_length=1, description="source shards: folder/prefix, brace pattern or one .tar")
    output: str = Field(min_length=1, description="cleaned shards go here, same relative names")
    scan_date: ScanDate | None = Field(default=None, description="default: latest")
    policy: FilterPolicy = Field(default_factory=FilterPolicy)
    dry_run: bool = False
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    task_num_cpus: float = Field(default=0.5, gt=0.0)

    @model_validator(mode="after")
    def _output_outside_input(self) -> FilterConfig:
        check_output_outside(
            self.output, self.input, "cleaned shards would overwrite or be re-read as sources"
        )
        return self
