"""The simulated account's vocabulary: models, tools, agents, people, titles and errors."""

from __future__ import annotations

# Model name -> cost of one agent step in micro-credits (1 credit = 1,000,000 micro).
MODEL_STEP_COST = {
    "sonnet-4.6": 3_500,
    "opus-4.7": 9_000,
    "gpt-5.5-high": 4_200,
    "gemini-3-pro": 2_600,
    "haiku-4.5": 900,
    "gemini-3-flash": 600,
    "grok-4.1-fast": 1_100,
    "kimi-k2.6": 700,
}
MODELS = tuple(MODEL_STEP_COST)
MODEL_WEIGHTS = (30, 8, 18, 10, 14, 8, 6, 6)

# Tool name -> (weight, median duration in ms).
TOOLS = {
    "http_request": (25, 900),
    "bash": (18, 2_500),
    "read_file": (12, 120),
    "write_file": (6, 150),
    "grep_search": (6, 400),
    "nuclei_scan": (8, 45_000),
    "browser_navigate": (8, 3_500),
    "httpx_probe": (5, 6_000),
    "subfinder": (4, 20_000),
    "python_exec": (5, 3_000),
    "ffuf_fuzz": (3, 60_000),
}
TOOL_NAMES = tuple(TOOLS)
TOOL_WEIGHTS = tuple(weight for weight, _ in TOOLS.values())
TOOL_CUM_WEIGHTS = tuple(sum(TOOL_WEIGHTS[: i + 1]) for i in range(len(TOOL_WEIGHTS)))

AGENTS = ("recon", "web-pentest", "code-review", "exploit-validator", "cloud-audit", "reporter")

EMAILS = (
    "alice@example.com",
    "bob@example.com",
    "carol@example.com",
    "dave@example.com",
    "erin@example.com",
)
EMAIL_WEIGHTS = (40, 25, 15, 12, 8)

TITLE_TEMPLATES = (
    "Scan {host} for exposed admin panels",
    "Review authentication flow of {host}",
    "Enumerate subdomains of {host}",
    "Check {host} for known CVEs",
    "Validate SSRF finding on {host}",
    "Audit S3 buckets referenced by {host}",
    "Fuzz API endpoints of {host}",
    "Triage scanner results for {host}",
)
HOSTS = (
    "app.example.com",
    "api.example.org",
    "staging.example.net",
    "shop.example.com",
    "intranet.example.io",
    "docs.example.dev",
)

ERROR_MESSAGES = (
    "sandbox exited unexpectedly",
    "model provider returned 529 overloaded",
    "max steps reached without completion",
    "tool timeout after 3600s",
)

# Usage statuses of finished streams and how often each occurs (mostly completed).
USAGE_STATUSES = ("completed", "error", "failed", "aborted", "blocked")
USAGE_WEIGHTS = (84, 6, 3, 5, 2)

BYOK_SHARE = 0.15
NEO_COST_PERCENT = 15  # BYOK: the Neo platform fee as a percentage of the LLM cost
