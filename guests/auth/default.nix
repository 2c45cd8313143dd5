# `auth`: PocketID, the identity provider every other service logs in with. Its service
# module comes from the inventory's `services`; settings that make this guest differ go here.
{ }
