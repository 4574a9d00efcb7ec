"""SIMULATOR -- not SGLang. Package marker for the harness's simulated `sglang.srt` (only
`sglang.srt.utils.kill_process_tree` is imitated)."""
