# repo2docker config for machines that reach no code-hosting site: only local
# and git repositories are probed (the Dataverse provider would otherwise
# download its list of installations for every URL). Used by the demo hub and
# the tests; pass it with `repo2docker.repo2docker_config`.
from repo2docker.contentproviders import Git, Local

c.Repo2Docker.content_providers = [Local, Git]  # noqa: F821 (c is given by traitlets)
