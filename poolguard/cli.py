def main() -> int:  # replaced by the config/CLI work
    return 0
