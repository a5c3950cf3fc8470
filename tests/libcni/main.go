// netfab-libcni: drives CNI plugins through the upstream libcni, the library
// containerd and CRI-O use, so the tests exercise netfab-cni exactly as a
// runtime does (config injection, capability args, result caching, chaining).
//
//	netfab-libcni ADD|CHECK|DEL|VERSION <conflist> <containerID> <netns> <ifname> [capabilityArgs JSON]
//
// CNI_PATH names the plugin directories (colon-separated); NETFAB_CNI_CACHE
// the result cache. ADD prints the result; errors go to stderr as JSON
// ({"code":N,"msg":...}) with exit status 1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

func fail(err error) {
	out := map[string]interface{}{"code": 0, "msg": err.Error()}
	// libcni wraps the plugin's error with the plugin's name.
	var e *types.Error
	if errors.As(err, &e) {
		out["code"] = e.Code
		out["msg"] = e.Msg
		out["details"] = e.Details
	}
	b, _ := json.Marshal(out)
	fmt.Fprintln(os.Stderr, string(b))
	os.Exit(1)
}

func main() {
	if len(os.Args) < 6 {
		fmt.Fprintln(os.Stderr, "usage: netfab-libcni ADD|CHECK|DEL|VERSION <conflist> <containerID> <netns> <ifname> [capabilityArgs]")
		os.Exit(2)
	}
	verb, confPath := os.Args[1], os.Args[2]
	list, err := libcni.ConfListFromFile(confPath)
	if err != nil {
		fail(err)
	}
	cache := os.Getenv("NETFAB_CNI_CACHE")
	if cache == "" {
		cache = filepath.Join(os.TempDir(), "netfab-libcni-cache")
	}
	cni := libcni.NewCNIConfigWithCacheDir(strings.Split(os.Getenv("CNI_PATH"), ":"), cache, nil)
	rt := &libcni.RuntimeConf{
		ContainerID: os.Args[3],
		NetNS:       os.Args[4],
		IfName:      os.Args[5],
	}
	if len(os.Args) > 6 {
		if err := json.Unmarshal([]byte(os.Args[6]), &rt.CapabilityArgs); err != nil {
			fail(fmt.Errorf("capability args: %v", err))
		}
	}
	ctx := context.Background()
	switch verb {
	case "ADD":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		b, err := json.Marshal(res)
		if err != nil {
			fail(err)
		}
		fmt.Println(string(b))
	case "CHECK":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "DEL":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "VERSION":
		info, err := cni.GetVersionInfo(ctx, list.Plugins[0].Network.Type)
		if err != nil {
			fail(err)
		}
		b, _ := json.Marshal(map[string]interface{}{"supportedVersions": info.SupportedVersions()})
		fmt.Println(string(b))
	default:
		fail(fmt.Errorf("unknown verb %s", verb))
	}
}
