"""The arch gate: does every ELF object in an artifact run on the target CPU?

gate.verify_artifacts is the entry point; profile loads the policy (verify/profiles, verify/waivers);
elfcheck, gobuildinfo, codescan and closure are the rules; report renders the result. Nothing is
imported here, so that `buildkit.archgate.model` stays cheap for the stages that only read reports.
"""
