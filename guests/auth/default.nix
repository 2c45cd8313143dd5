# `auth`: PocketID, the identity provider every other service logs in with.
{
  imports = [ ../../modules/services/pocket-id.nix ];
}
