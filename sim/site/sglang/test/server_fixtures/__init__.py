"""SIMULATOR -- not SGLang. Package marker for the imitated `sglang.test.server_fixtures`."""
